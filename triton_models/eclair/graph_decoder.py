"""ECLAIR's mBART decoder on the checkpoint's own weights, with a static KV cache and CUDA graphs.

`SlotDecoder` keeps `slots` pages in flight: a self-attention KV cache of `slots` x `max_new_tokens`
allocated once, cross-attention K/V computed once per page at `admit`, and per-slot positions,
tokens and finished flags on the device, so a step is a fixed sequence of kernels: on CUDA one
CUDA graph per batch bucket (1, 2, 4, ... `slots`), captured at load; on CPU the same code, eager.
A step is MBartForCausalLM's math, then the processors of HF's greedy `generate` for the
checkpoint's generation_config (greedy_rules.py; others are refused), argmax, and eos/pad
bookkeeping on the device.
The vision encoder runs through `encoder_graphs.py`: captured per bucket on CUDA, eager on CPU.
`runtime.GraphGenerator` drives it in place of `generate`; `inflight.py` as the in-flight batcher.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def bucket_sizes(slots: int) -> list[int]:
    """1, 2, 4, ... below `slots`, then `slots` itself: the batch sizes captured as graphs."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    sizes, size = [], 1
    while size < slots:
        sizes.append(size)
        size *= 2
    return sizes + [slots]


def bucket_for(active: int, buckets: list[int]) -> int:
    """The smallest bucket holding `active` slots."""
    for size in buckets:
        if size >= active >= 1:
            return size
    raise ValueError(f"active slots must be 1..{buckets[-1]}, got {active}")


def cache_bytes(layers: int, heads: int, head_dim: int, slots: int, max_new_tokens: int, encoder_tokens: int,
                itemsize: int) -> int:
    """Self K/V (slots x max_new_tokens positions) plus cross K/V (slots x encoder tokens), all layers."""
    return 2 * layers * slots * heads * head_dim * (max_new_tokens + encoder_tokens) * itemsize


def check_cache_fits(needed: int, free: int, slots: int, max_new_tokens: int) -> None:
    if needed > free:
        raise ValueError(f"ECLAIR's decoder KV cache for {slots} slots x {max_new_tokens} new tokens needs "
                         f"{needed / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of GPU memory is free; "
                         "lower the slots or max_new_tokens.")


def attention_kernels(device: torch.device):
    """On CUDA: flash, memory-efficient or math attention, never cuDNN's (fails for these fp16 heads)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _on_own_device(method):
    """Run with the decoder's GPU as the current device: Triton kernels, CUDA graphs and events follow
    the current device, not the tensors' (an instance on cuda:1, or the scheduler's own thread)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            return method(self, *args, **kwargs)
    return run


class SlotDecoder:
    """mBART decoder of a VisionEncoderDecoder, greedy, with a static self-attention KV cache of
    `slots` x `max_new_tokens` positions allocated once, cross-attention K/V per slot computed once
    per page, and (on CUDA) one CUDA graph per batch bucket (1, 2, 4, ... up to slots) captured at load.

    The caller keeps the pages it is decoding in slots [0, active); a slot past `active` (inside the
    bucket) is computed but ignored. `move` copies a page between slots, for compaction."""

    def __init__(self, model, slots: int, max_new_tokens: int, ids, device: str, dtype: torch.dtype,
                 use_graphs: bool | None = None, encoder_graph_batch: int = 0, *, compile_encoder: bool):
        # compile_encoder has no default here: the default is parse_compile_encoder's, where the setting is
        # read (runtime.make_generator, EclairRuntime); a default here once drifted from it.
        self.model, self.device, self.dtype = model.eval(), torch.device(device), dtype
        self.compile_encoder = compile_encoder
        cuda = self.device.type == "cuda"
        self.use_graphs = cuda if use_graphs is None else use_graphs
        if self.use_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        causal = model.decoder
        self.core = getattr(getattr(causal, "model", None), "decoder", None)
        if self.core is None or not hasattr(self.core.layers[0], "encoder_attn"):
            raise ValueError(f"ECLAIR's graph decoder drives an MBartForCausalLM with cross-attention, not "
                             f"{type(causal).__name__}")
        self.lm_head = causal.get_output_embeddings()
        attn = self.core.layers[0].self_attn
        self.heads, self.head_dim, self.d_model = attn.num_heads, attn.head_dim, attn.embed_dim
        self.offset = getattr(self.core.embed_positions, "offset", 2)
        positions = self.core.embed_positions.weight.shape[0] - self.offset
        if max_new_tokens > positions:
            raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the decoder's {positions} positions")
        self.slots, self.max_new_tokens, self.buckets = slots, max_new_tokens, bucket_sizes(slots)
        self.project = (model.encoder.config.hidden_size != model.decoder.config.hidden_size
                        and getattr(model.decoder.config, "cross_attention_hidden_size", None) is None)
        rules = _sibling("greedy_rules")  # refuses a generation_config it does not reproduce, before any allocation
        self.processors = rules.GreedyProcessors(rules.greedy_rules(model.generation_config),
                                                 self.lm_head.weight.shape[0], self.device)
        size = model.config.encoder.image_size
        self.image_hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        with torch.inference_mode(), torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
            probe = self._encode_eager(torch.zeros(1, 3, *self.image_hw, device=self.device, dtype=dtype))
        self.encoder_tokens = probe.shape[1]
        layers = len(self.core.layers)
        self._kv_bytes = cache_bytes(layers, self.heads, self.head_dim, slots, max_new_tokens, self.encoder_tokens,
                                     torch.empty(0, dtype=dtype).element_size())
        if cuda:  # before anything is allocated or captured
            check_cache_fits(self._kv_bytes, torch.cuda.mem_get_info(self.device)[0], slots, max_new_tokens)
        with torch.inference_mode(), torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
            self._allocate(layers, ids)
            self._fuse_for_gpu()
            self.graphs = {}
            self.encoder_graphs = _sibling("encoder_graphs").EncoderGraphs(
                (3, *self.image_hw), (self.encoder_tokens, self.d_model), self.device, dtype,
                functools.partial(attention_kernels, self.device))
            if self.use_graphs:
                self._capture(encoder_graph_batch)

    @property
    def kv_cache_bytes(self) -> int:
        return self._kv_bytes

    @property
    def encoder_mode(self) -> str:
        """How the vision encoder runs, for the load log."""
        return self.encoder_graphs.mode

    def _allocate(self, layers: int, ids) -> None:
        on = {"device": self.device}
        self_shape = (layers, self.slots, self.heads, self.max_new_tokens, self.head_dim)
        cross_shape = (layers, self.slots, self.heads, self.encoder_tokens, self.head_dim)
        self.self_k, self.self_v = (torch.zeros(self_shape, dtype=self.dtype, **on) for _ in range(2))
        self.cross_k, self.cross_v = (torch.zeros(cross_shape, dtype=self.dtype, **on) for _ in range(2))
        self.token_ids = torch.tensor([ids.start, ids.pad, ids.eos], dtype=torch.long, **on)
        self.ids = ids
        self.pos = torch.zeros(self.slots, dtype=torch.long, **on)  # position of the current input token
        self.cur = torch.full((self.slots,), ids.pad, dtype=torch.long, **on)  # current input token
        self.done = torch.ones(self.slots, dtype=torch.bool, **on)
        self.limit = torch.full((self.slots,), self.max_new_tokens, dtype=torch.long, **on)
        self.out = torch.full((self.slots,), ids.pad, dtype=torch.long, **on)
        self.status = torch.zeros(self.slots, 2, dtype=torch.long, **on)  # per slot: new token, finished
        pinned = self.device.type == "cuda"  # two host copies: one read while the next step runs
        self._host_status = [torch.zeros(self.slots, 2, dtype=torch.long, pin_memory=pinned) for _ in range(2)]
        self._copied = [torch.cuda.Event() for _ in range(2)] if pinned else []
        self._turn = 0
        self.rows = torch.arange(self.slots, **on)
        self.key_pos = torch.arange(self.max_new_tokens, **on)

    def _fuse_for_gpu(self) -> None:
        """On a GPU with Triton, the step runs through the decode kernels (decode_attention.py)."""
        self.kernels, self.fused = None, []
        if self.device.type == "cuda":
            module = _sibling("decode_attention")
            if module.available(self.device):
                self.use_kernels(module, torch.cuda.get_device_properties(self.device).multi_processor_count)

    @torch.inference_mode()
    def use_kernels(self, module, sms: int) -> bool:
        """Run the step through `module`'s kernels, on a device of `sms` multiprocessors:
        each layer's q/k/v projections as one matrix, split-K attention that also writes the step's K/V
        into the cache, and each residual add fused with the layer norm after it. Kernels whose
        load-time check fails are not used (a warning): the PyTorch step stays."""
        problem = module.problem(self.device, self.dtype, self.heads, self.head_dim, sms)
        if problem:
            log.warning("ECLAIR decoder: PyTorch's attention and layer norms instead of the decode kernels (%s)", problem)
            return False
        self.kernels, self.sms = module, sms
        self.counters = torch.zeros(self.slots * self.heads, device=self.device, dtype=torch.int32)
        self.fused = []
        for layer in self.core.layers:
            projections = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
            biases = [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in projections]
            self.fused.append((torch.cat([p.weight for p in projections]), torch.cat(biases)))
        return True

    def set_ids(self, ids) -> None:
        """Change the start/pad/eos ids (device values: no recapture)."""
        if ids != self.ids:
            with torch.inference_mode():
                self.token_ids.copy_(torch.tensor([ids.start, ids.pad, ids.eos]))
            self.ids = ids

    # -- the encoder ------------------------------------------------------------------------------
    def _encode_eager(self, pixels: torch.Tensor) -> torch.Tensor:
        states = self.model.encoder(pixel_values=pixels, return_dict=True).last_hidden_state
        return self.model.enc_to_dec_proj(states) if self.project else states

    @_on_own_device
    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> encoder states [B, T, d_model] (after enc_to_dec_proj where the model has one)."""
        pixels = pixels.to(self.device, self.dtype)
        with attention_kernels(self.device):
            return self.encoder_graphs(pixels, self._encode_eager)

    # -- the slots --------------------------------------------------------------------------------
    @_on_own_device
    @torch.inference_mode()
    def admit(self, slots: list[int], encoder_states: torch.Tensor, limit: int | None = None) -> None:
        """Put pages into these slots: cross K/V of every layer from their encoder states, position 0,
        current token = start, not finished; `limit` (default max_new_tokens) caps their new tokens."""
        count, tokens = len(slots), encoder_states.shape[1]
        if len(set(slots)) != count or not all(0 <= s < self.slots for s in slots):
            raise ValueError(f"admit: slots must be distinct, in 0..{self.slots - 1}; got {slots}")
        if encoder_states.shape[0] != count or tokens != self.encoder_tokens:
            raise ValueError(f"admit: {count} slots need states [{count}, {self.encoder_tokens}, d], "
                             f"got {tuple(encoder_states.shape)}")
        limit = self.max_new_tokens if limit is None else limit
        if not 1 <= limit <= self.max_new_tokens:
            raise ValueError(f"admit: limit must be 1..{self.max_new_tokens}, got {limit}")
        index = to_device(torch.tensor(slots, dtype=torch.long), self.device)  # a step may be running
        states = encoder_states.to(self.device, self.dtype)
        for i, layer in enumerate(self.core.layers):
            cross = layer.encoder_attn
            for proj, cache in ((cross.k_proj, self.cross_k), (cross.v_proj, self.cross_v)):
                cache[i].index_copy_(0, index, proj(states).view(count, tokens, -1, self.head_dim).transpose(1, 2))
        for cache in (self.self_k, self.self_v):
            cache.index_fill_(1, index, 0)  # finite values under the mask (0 x stale inf would be nan)
        self.pos.index_fill_(0, index, 0)
        self.cur.index_copy_(0, index, self.token_ids[0].expand(count))
        self.done.index_fill_(0, index, False)
        self.limit.index_fill_(0, index, limit)

    @torch.inference_mode()
    def release(self, slot: int) -> None:
        self.done[slot] = True
        self.cur[slot] = self.ids.pad

    @torch.inference_mode()
    def move(self, src: int, dst: int) -> None:
        """Copy the page in slot `src` (caches and state) to slot `dst`, e.g. to keep live pages low."""
        for cache in (self.self_k, self.self_v, self.cross_k, self.cross_v):
            cache[:, dst].copy_(cache[:, src])
        for state in (self.pos, self.cur, self.done, self.limit, self.out):
            state[dst] = state[src]

    @_on_own_device
    @torch.inference_mode()
    def launch(self, active: int) -> tuple[int, int]:
        """Queue one greedy step for slots [0, bucket(active)) and the copy of its tokens and finished
        flags to the host, without waiting: the caller reads the previous step (`collect`) while this
        one runs. Returns what `collect` takes."""
        size = bucket_for(active, self.buckets)
        if self.graphs:
            self.graphs[size].replay()
        else:
            with attention_kernels(self.device):
                self._step(size)
        turn, self._turn = self._turn, self._turn ^ 1
        self._host_status[turn][:active].copy_(self.status[:active], non_blocking=bool(self._copied))
        if self._copied:
            self._copied[turn].record()
        return turn, active

    def collect(self, launched: tuple[int, int]) -> tuple[list[int], list[bool]]:
        """A launched step's new token of each slot in [0, active) (pad for a slot already finished)
        and whether the slot is finished, once the step is done."""
        turn, active = launched
        if self._copied:
            self._copied[turn].synchronize()
        rows = self._host_status[turn][:active].tolist()
        return [token for token, _ in rows], [bool(done) for _, done in rows]

    def step(self, active: int) -> torch.Tensor:
        """One step, waited for: the new token of each slot in [0, active) on the host."""
        return torch.tensor(self.collect(self.launch(active))[0])

    @torch.inference_mode()
    def finished(self, active: int) -> torch.Tensor:
        return _host(self.done[:active])

    def _step(self, b: int) -> None:
        """The captured region: slots [0, b) advance one token; fixed shapes, no host sync."""
        core, heads, hd = self.core, self.heads, self.head_dim
        pos, rows, done = self.pos[:b], self.rows[:b], self.done[:b]
        x = core.embed_tokens(self.cur[:b, None])  # embed_scale inside
        x = x + F.embedding(pos[:, None] + self.offset, core.embed_positions.weight)
        if getattr(core, "layernorm_embedding", None) is not None:
            x = core.layernorm_embedding(x)
        attend = self._attention(b) if self.kernels else None
        mask = None if attend else (self.key_pos[None, :] <= pos[:, None]).view(b, 1, 1, -1)  # own past and itself
        layers = core.layers
        h = layers[0].self_attn_layer_norm(x)
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            keys, values = self.self_k[i, :b], self.self_v[i, :b]
            if attend:  # one projection; the kernel writes k, v at pos and attends to [0, pos]
                q, k, v = F.linear(h[:, 0], *self.fused[i]).view(b, 3, heads, hd).unbind(1)
                o = attend(q, keys, values, attn.scaling, pos, 1, k, v, self_attention=True, skip=done)
            else:
                q = attn.q_proj(h).view(b, 1, heads, hd).transpose(1, 2)
                keys[rows, :, pos] = attn.k_proj(h).view(b, heads, hd)
                values[rows, :, pos] = attn.v_proj(h).view(b, heads, hd)
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling).transpose(1, 2)
            x, h = self._add_norm(x, attn.out_proj(o.reshape(b, 1, -1)), layer.encoder_attn_layer_norm)
            cross = layer.encoder_attn
            q = cross.q_proj(h)
            if attend:
                o = attend(q.view(b, heads, hd), self.cross_k[i, :b], self.cross_v[i, :b], cross.scaling, skip=done)
            else:
                o = F.scaled_dot_product_attention(q.view(b, 1, heads, hd).transpose(1, 2), self.cross_k[i, :b],
                                                   self.cross_v[i, :b], scale=cross.scaling).transpose(1, 2)
            x, h = self._add_norm(x, cross.out_proj(o.reshape(b, 1, -1)), layer.final_layer_norm)
            following = layers[i + 1].self_attn_layer_norm if i + 1 < len(layers) else getattr(core, "layer_norm", None)
            x, h = self._add_norm(x, layer.fc2(layer.activation_fn(layer.fc1(h))), following)
        x = x if h is None else h  # the decoder's final layer norm, where it has one
        scores = self.processors(self.lm_head(x)[:, 0].float(), pos, self.limit[:b], self.token_ids[2])
        pad, eos = self.token_ids[1], self.token_ids[2]
        token = torch.where(done, pad, scores.argmax(-1))
        generated = pos + 1
        finished = done | (token == eos) | (generated >= self.limit[:b])
        self.pos[:b].copy_(torch.where(done, pos, generated.clamp(max=self.max_new_tokens - 1)))
        self.out[:b].copy_(token)
        self.cur[:b].copy_(token)
        self.done[:b].copy_(finished)
        self.status[:b, 0].copy_(token)
        self.status[:b, 1].copy_(finished)

    def _attention(self, b: int):
        """decode_attention for a b-page step, with each form's tiling (decode_attention.launch_for)."""
        def attend(q, k, v, scale, *lengths_and_new, self_attention=False, skip=None):
            launch = self.kernels.launch_for(b * self.heads, self_attention)
            return self.kernels.decode_attention(q, k, v, scale, launch.per_sm * self.sms, *lengths_and_new,
                                                 counters=self.counters, launch=launch, skip=skip)
        return attend

    def _add_norm(self, x: torch.Tensor, y: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The residual x + y and the layer norm after it (None without one): one kernel on a GPU."""
        if norm is None:
            return x + y, None
        if self.kernels:
            return self.kernels.add_layer_norm(x, y, norm)
        total = x + y
        return total, norm(total)

    # -- CUDA graphs ------------------------------------------------------------------------------
    def _capture(self, encoder_graph_batch: int) -> None:
        pool, kernels = torch.cuda.graph_pool_handle(), lambda: attention_kernels(self.device)  # noqa: E731  (one-shot)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), kernels():  # warm-up: cuBLAS handles, kernel selection
            for size in self.buckets:
                for _ in range(2):
                    self._step(size)
        torch.cuda.current_stream(self.device).wait_stream(side)
        for size in reversed(self.buckets):
            graph = torch.cuda.CUDAGraph()
            with kernels(), torch.cuda.graph(graph, pool=pool):
                self._step(size)
            self.graphs[size] = graph
        self.done.fill_(True)
        self.pos.zero_()
        self.cur.fill_(self.ids.pad)
        if encoder_graph_batch > 0:
            self.encoder_graphs.capture(self._encode_eager, bucket_sizes(encoder_graph_batch), self.compile_encoder, pool)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """To a GPU through pinned memory, not waiting for the step in flight (a copy from pageable memory would)."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


def _sibling(name: str):
    """A module of this folder, published beside this file as eclair_<name>.py."""
    return importlib.import_module(f"eclair_{name}" if __name__ == "eclair_graph_decoder"
                                   else f"triton_models.eclair.{name}")


def _host(tensor: torch.Tensor) -> torch.Tensor:
    """A plain (non-inference) host copy."""
    with torch.inference_mode(False):
        return tensor.to("cpu", copy=True)
