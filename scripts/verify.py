"""Health means "answers correctly": send each model's golden inputs through Triton and compare.

`GoldenRequest` holds one published model's golden request and its check; `verify`, `status`
and the soak all use it. Every request carries a client timeout: a hung server is an error,
never a hang.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.check import compare
from converters.model_folder import GOLDEN_FILE, Golden, read_model_config, wire_type
from scripts.health import CALL_TIMEOUT_S, wait_until_ready
from scripts.report import ModelRow

REQUEST_TIMEOUT_S = 60.0  # a first ECLAIR page on CPU takes seconds; nothing legitimate takes a minute


@dataclass(frozen=True)
class Verification:
    model: str
    ok: bool
    detail: str


class GoldenRequest:
    """A published model's golden inputs as a request, and the check of an answer against them."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        self.name = model_dir.name
        self.problem = None if (model_dir / GOLDEN_FILE).is_file() else f"no {GOLDEN_FILE} in {model_dir}; rebuild the model"
        if self.problem:
            return
        self.config = read_model_config(model_dir)
        self.golden = Golden.read(model_dir)
        self.wire = {i.name: wire_type(i.data_type) for i in self.config.input}
        missing = [i.name for i in self.config.input if i.name not in self.golden.inputs and not i.optional]
        if missing:
            self.problem = f"{GOLDEN_FILE} lacks input '{missing[0]}'"

    def inputs(self, protocol) -> list:
        """`protocol`: tritonclient.http or tritonclient.grpc."""
        tensors = []
        for name, wire in self.wire.items():
            if name not in self.golden.inputs:
                continue  # an optional input the golden request leaves out
            value = self.golden.inputs[name]
            if wire == "BYTES":
                value = value.astype(object)
            tensor = protocol.InferInput(name, list(value.shape), wire)
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        return tensors

    def infer(self, client, timeout_s: float = REQUEST_TIMEOUT_S):
        protocol = importlib.import_module(type(client).__module__.rsplit(".", 1)[0])
        outputs = [protocol.InferRequestedOutput(o) for o in self.golden.outputs]
        if protocol.__name__.endswith("grpc"):
            return client.infer(self.name, self.inputs(protocol), outputs=outputs, client_timeout=timeout_s)
        return client.infer(self.name, self.inputs(protocol), outputs=outputs)  # HTTP: the client's network_timeout

    def check(self, response) -> Verification:
        """The answer against the golden outputs, within the tolerance of the served precision."""
        worst = 0.0
        for output, expected in self.golden.outputs.items():
            try:
                actual = response.as_numpy(output)
            except ValueError as exc:  # a malformed answer is a finding, not a crash
                return Verification(self.name, False, f"output '{output}' is malformed: {exc}")
            if actual is None or actual.shape != expected.shape:
                return Verification(self.name, False, f"output '{output}' has shape "
                                                      f"{None if actual is None else actual.shape}, expected {expected.shape}")
            if expected.dtype.kind in "SUO":
                if [bytes(x) if not isinstance(x, bytes) else x for x in actual.ravel()] != [
                        x.encode() if isinstance(x, str) else bytes(x) for x in expected.ravel()]:
                    return Verification(self.name, False, f"output '{output}' differs from the golden text")
                continue
            (error,) = compare({output: expected}, {output: actual}, self.golden.tolerance).errors
            worst = max(worst, error.max_abs)
            if not error.ok:
                atol, rtol = self.golden.tolerance
                return Verification(self.name, False, f"output '{output}' max abs error {error.max_abs:.3g} over its "
                                                      f"tolerance (atol {atol:g} x its column's range, rtol {rtol:g})")
        return Verification(self.name, True, f"max abs error {worst:.3g}")


def verify_model(client, model_dir: Path, timeout_s: float = REQUEST_TIMEOUT_S) -> Verification:
    """`client` is a tritonclient http or grpc InferenceServerClient; `model_dir` the published folder."""
    request = GoldenRequest(model_dir)
    if request.problem:
        return Verification(request.name, False, request.problem)
    try:
        response = request.infer(client, timeout_s)
    except Exception as exc:  # the server's answer, whatever its type, is the finding
        return Verification(request.name, False, f"inference failed: {exc}")
    return request.check(response)


def verify_all(grpc_url: str, folders: dict[str, Path], load_times: dict[str, float] | None = None) -> tuple[list[ModelRow], bool]:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(grpc_url)
    rows, all_ok = [], True
    for name, folder in folders.items():
        row = ModelRow.from_folder(folder)
        try:
            row.ready = "yes" if client.is_model_ready(name, client_timeout=CALL_TIMEOUT_S) else "no"
        except Exception:
            row.ready = "no"
        if row.ready == "yes":
            result = verify_model(client, folder)
            row.verified = "yes" if result.ok else f"NO: {result.detail}"
            all_ok &= result.ok
        else:
            all_ok = False
        if load_times and name in load_times:
            row.load_s = f"{load_times[name]:.1f}"
        rows.append(row)
    client.close()
    return rows, all_ok


def main(argv: list[str] | None = None) -> int:
    """`python -m scripts.verify --url HOST:PORT --repository DIR --models a,b [--embeddings-url HOST:PORT]`:
    wait until Triton has every model ready, send each its golden inputs, print the table; exit 1
    unless all answer correctly. With --embeddings-url, the OpenAI-compatible endpoint there too
    (scripts.embeddings_service, its own row). What the Helm chart's `helm test` pod runs against
    the Services."""
    import argparse
    import sys

    from converters.errors import ArgumentParser, UserError
    from scripts.report import table

    parser = ArgumentParser(prog="python -m scripts.verify", description=main.__doc__)
    parser.add_argument("--url", required=True, help="Triton's gRPC address, host:port")
    parser.add_argument("--repository", type=Path, required=True, help="the published model repository (golden files)")
    parser.add_argument("--models", required=True, help="comma list of Triton model names")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every model to be ready")
    parser.add_argument("--embeddings-url", help="the embeddings endpoint's HTTP address, host:port (verified "
                                                 "against e5_small_v2_text's golden embeddings)")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    try:
        wait_until_ready(args.url, names, args.timeout)
        rows, ok = verify_all(args.url, {name: args.repository / name for name in names})
        if args.embeddings_url:
            from scripts.embeddings_service import TEXT_MODEL, verify, wait_ready

            try:
                wait_ready(args.embeddings_url, args.timeout)
            except UserError:
                pass  # its row says it is not ready, under the models' rows
            row = verify(args.embeddings_url, args.repository / TEXT_MODEL)
            rows, ok = rows + [row], ok and row.verified == "yes"
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table(rows))
    endpoint = f" and the embeddings endpoint at {args.embeddings_url}" if args.embeddings_url else ""
    print(f"{'all' if ok else 'NOT all'} {len(names)} models at {args.url}{endpoint} answer their golden inputs")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
