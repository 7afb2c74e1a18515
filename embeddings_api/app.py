"""An OpenAI-compatible embeddings endpoint in front of `e5_small_v2_text`, over Triton's gRPC.

What nv-ingest's embedding step calls (`OpenAI(base_url=.../v1).embeddings.create(input=...,
model=..., encoding_format=..., extra_body={"input_type": ..., "truncate": ...})`, read in
nv-ingest-api 25.4.2, `internal/transform/embed_text.py`), and what any OpenAI client can call:

- `POST /v1/embeddings`: `model`, `input` (a string or a list of strings), `input_type`
  (query|passage, default query), `encoding_format` (float|base64), `truncate` (END|NONE);
  answered in OpenAI's shape (`data[i].embedding`, `usage`).
- `GET /v1/models`: the one model served. `GET /v1/health/live` and `/v1/health/ready` (ready when
  Triton answers and `e5_small_v2_text` is ready), as NVIDIA's NIMs spell them.

Errors are OpenAI's error JSON: 400 for a request the client must fix, 503 while Triton cannot be
reached or the model is not ready, 500 for anything else. No request crashes the service.
"""
from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

INPUT_TYPES = ("query", "passage")
ENCODINGS = ("float", "base64")
TRUNCATIONS = ("END", "NONE")  # END: the served tokenizer truncates at the end; START is not served


@dataclass(frozen=True)
class ServiceSettings:
    triton_url: str  # Triton's gRPC address, host:port
    model_id: str = "e5-small-v2"  # what clients pass as `model` and `/v1/models` lists
    triton_model: str = "e5_small_v2_text"
    max_inputs: int = 2048  # per request, as OpenAI's own limit
    timeout_s: float = 60.0


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else ("service_unavailable" if self.status == 503 else "server_error")
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}},
                            status_code=self.status)


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    input_type: str
    encoding_format: str
    truncate: str

    @classmethod
    def parse(cls, body: object, settings: ServiceSettings) -> "EmbeddingRequest":
        """The request body, validated; an ApiError(400) names the first field that is wrong."""
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model not in (settings.model_id, settings.triton_model):
            raise ApiError(400, f"model '{model}' is not served here; use '{settings.model_id}' (GET /v1/models)",
                           "model", "model_not_found")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "'input' must be a string or a list of strings (token ids are not accepted)", "input")
        if not texts or any(not t for t in texts):
            raise ApiError(400, "'input' must hold at least one string, and no empty string", "input")
        if len(texts) > settings.max_inputs:
            raise ApiError(400, f"'input' has {len(texts)} strings; send at most {settings.max_inputs} per request", "input")
        input_type = body.get("input_type", "query")
        if input_type not in INPUT_TYPES:
            raise ApiError(400, f"'input_type' must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}", "input_type")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ENCODINGS:
            raise ApiError(400, f"'encoding_format' must be one of {', '.join(ENCODINGS)}, got {encoding!r}",
                           "encoding_format")
        truncate = str(body.get("truncate") or "END").upper()
        if truncate not in TRUNCATIONS:
            raise ApiError(400, f"'truncate' must be one of {', '.join(TRUNCATIONS)} (the served tokenizer keeps the "
                                f"start of a text), got {body.get('truncate')!r}", "truncate")
        return cls(texts, input_type, encoding, truncate)


def encode_vector(vector: np.ndarray, encoding: str):
    """OpenAI's two encodings: a list of floats, or base64 of little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


class TritonEmbedder:
    """`e5_small_v2_text` over gRPC (asyncio): texts in chunks of its max batch, sent at once."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._client = None
        self._max_batch: int | None = None

    def client(self):
        import tritonclient.grpc.aio as grpc_aio

        if self._client is None:
            self._client = grpc_aio.InferenceServerClient(self.settings.triton_url)
        return self._client

    async def reset(self) -> None:
        """Drop the channel after a failed call: one opened before Triton was reachable (a pod that
        started before Triton's) was seen to fail every later call; a new one works."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # already broken: nothing to close cleanly
                pass

    async def ready(self) -> bool:
        try:
            return bool(await self.client().is_model_ready(self.settings.triton_model, client_timeout=5))
        except Exception:  # not reachable: not ready, and the next call opens a new channel
            await self.reset()
            return False

    async def max_batch(self) -> int:
        if self._max_batch is None:
            config = await self.client().get_model_config(self.settings.triton_model, as_json=True, client_timeout=10)
            self._max_batch = max(1, int(config["config"].get("max_batch_size", 1)))
        return self._max_batch

    async def _infer(self, texts: list[str], input_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import tritonclient.grpc.aio as grpc_aio

        feeds = []
        for name, values in (("text", texts), ("input_type", [input_type] * len(texts))):
            tensor = grpc_aio.InferInput(name, [len(texts), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[v.encode("utf-8")] for v in values], dtype=object))
            feeds.append(tensor)
        outputs = [grpc_aio.InferRequestedOutput(n) for n in ("embedding", "tokens", "truncated")]
        result = await self.client().infer(self.settings.triton_model, feeds, outputs=outputs,
                                           client_timeout=self.settings.timeout_s)
        return (result.as_numpy("embedding"), result.as_numpy("tokens").reshape(-1),
                result.as_numpy("truncated").reshape(-1))

    async def embed(self, request: EmbeddingRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embeddings [N, D], tokens used per text [N] and whether each text was truncated [N]."""
        try:
            size = await self.max_batch()
            chunks = [request.texts[i:i + size] for i in range(0, len(request.texts), size)]
            answers = await asyncio.gather(*(self._infer(chunk, request.input_type) for chunk in chunks))
        except Exception as exc:
            if not _refused_request(exc):  # Triton's own "bad request" leaves the channel good
                await self.reset()
            raise
        return tuple(np.concatenate([a[i] for a in answers]) for i in range(3))


def _refused_request(exc: Exception) -> bool:
    from tritonclient.utils import InferenceServerException

    return isinstance(exc, InferenceServerException) and "INVALID_ARG" in str(exc.status() or "")


def triton_error(exc: Exception) -> ApiError:
    """Triton's failure as an ApiError: 503 where it cannot be reached, 400 where it refused the
    request, else 500."""
    from tritonclient.utils import InferenceServerException

    status = str(exc.status() or "") if isinstance(exc, InferenceServerException) else ""
    message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
    if "UNAVAILABLE" in status or "DEADLINE" in status or "not ready" in message or "unavailable" in message.lower():
        return ApiError(503, f"Triton cannot answer now ({message}); retry once it is ready")
    if "INVALID_ARG" in status:
        return ApiError(400, f"Triton refused the request: {message}")
    return ApiError(500, f"Triton failed: {message}")


def create_app(settings: ServiceSettings, embedder: TritonEmbedder | None = None) -> Starlette:
    embedder = embedder or TritonEmbedder(settings)

    async def embeddings(request: Request) -> JSONResponse:
        try:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
            parsed = EmbeddingRequest.parse(body, settings)
            try:
                vectors, tokens, truncated = await embedder.embed(parsed)
            except Exception as exc:  # whatever Triton says, the client gets OpenAI's error shape
                raise triton_error(exc) from None
            if parsed.truncate == "NONE" and truncated.any():
                first = int(np.nonzero(truncated)[0][0])
                raise ApiError(400, f"input {first} is longer than the model's token limit and truncate is NONE; "
                                    "shorten it or send truncate END", "input")
            used = int(tokens.sum())
            return JSONResponse({
                "object": "list", "model": settings.model_id,
                "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, parsed.encoding_format)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": used, "total_tokens": used}})
        except ApiError as exc:
            return exc.response()

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": settings.model_id, "object": "model", "created": 0, "owned_by": "doc-triton",
             "root": settings.triton_model}]})

    async def live(_: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> JSONResponse:
        ok = await embedder.ready()
        return JSONResponse({"ready": ok, "triton_model": settings.triton_model}, status_code=200 if ok else 503)

    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"the embeddings service failed: {exc}").response()

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/v1/health/live", live, methods=["GET"]),
                             Route("/v1/health/ready", ready, methods=["GET"])],
                     exception_handlers={Exception: server_error})
