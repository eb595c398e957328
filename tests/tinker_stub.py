"""A loopback HTTP stub of the Tinker service protocol, pinned to tinker 0.38.0, that runs the work on a LocalServiceClient.

It answers the happy-path endpoints the real SDK calls (tinker/lib/internal_client_holder.py,
lib/public_interfaces/*, resources/*) so `tinker.ServiceClient` can be driven end to end offline:

    client/config, client/dynamic_config, create_session, session_heartbeat, sessions/{id}/finish,
    create_model, get_info, load_weights (create-via-load), forward_backward (protobuf body,
    forward_only flag), optim_step, save_weights, save_weights_for_sampler (named or ephemeral),
    create_sampling_session, GET samplers/{id}, asample, retrieve_future (long-poll; protobuf replies
    for ForwardBackwardOutput and SampleResponse, built with the SDK's own pb2 module).

Requests are parsed with the SDK's own pydantic request types and handed to the matching
LocalServiceClient / LocalTrainingClient / LocalSamplingClient call, so the numbers are real.
The SDK sends a training client's requests one at a time in seq_id order (`parallel_fwdbwd_chunks`
is turned off), so submitting them in arrival order keeps the service's ordering. Model ids follow
the SDK's own `<session_id>:train:<model_seq_id>`; `tinker://` paths are rewritten between the
local store's run ids and those model ids in both directions.

Not emulated: JWT auth, pyqwest, chunk-parallel fwd/bwd, retrieve_futures, metadata-only replies,
REST (RestClient) endpoints, custom losses, telemetry, external weights, failures (every reply is a
success or an HTTP error carrying the local client's status).
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import itertools
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import numpy as np
import tinker
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.response_conv import _tensor_data_from_proto

PINNED_TINKER = "0.38.0"
LONG_POLL_SECONDS = 5.0  # retrieve_future waits this long for a result before answering try_again
MAX_LIFETIME_SECONDS = 300.0  # the server stops itself after this, whatever the test does
_STOP_REASONS = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}


def installed_tinker_version() -> str:
    try:
        return importlib.metadata.version("tinker")
    except importlib.metadata.PackageNotFoundError:
        return getattr(tinker, "__version__", "unknown")


def pin_reason() -> str | None:
    """Why the stub cannot be trusted here (None when the installed SDK is the pinned one)."""
    version = installed_tinker_version()
    if version != PINNED_TINKER:
        return (f"tests/tinker_stub.py speaks tinker {PINNED_TINKER}'s undocumented wire protocol; installed tinker is {version}: "
                f"re-verify the stub against the new SDK (endpoints, protobuf replies) and bump PINNED_TINKER")
    return None


class HttpError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


# ---- protobuf codecs (SDK request -> tinker types; tinker types -> SDK reply) ---------------------
def datums_from_proto(request: pb.ForwardBackwardRequest) -> list[types.Datum]:
    datums = []
    for datum in request.data:
        chunks = []
        for chunk in datum.model_input:
            if chunk.WhichOneof("chunk") != "encoded_text":
                raise HttpError(400, f"the stub handles text chunks only, got {chunk.WhichOneof('chunk')}")
            chunks.append(types.EncodedTextChunk(tokens=np.frombuffer(chunk.encoded_text.tokens, dtype=np.int32).tolist()))
        inputs = {name: _tensor_data_from_proto(tensor) for name, tensor in datum.loss_fn_inputs.items()}
        datums.append(types.Datum(model_input=types.ModelInput(chunks=chunks), loss_fn_inputs=inputs))
    return datums


def forward_backward_output_to_proto(output: types.ForwardBackwardOutput) -> bytes:
    """One batched ArrayRecord: per field, the datums' flat arrays concatenated with byte offsets."""
    record = pb.ArrayRecord(type_tag=output.loss_fn_output_type, num_datums=len(output.loss_fn_outputs))
    names = output.loss_fn_outputs[0].keys() if output.loss_fn_outputs else []
    for name in names:
        arrays = [datum[name].to_numpy() for datum in output.loss_fn_outputs]
        dtype = pb.DTYPE_FLOAT32 if arrays[0].dtype.kind == "f" else pb.DTYPE_INT64
        arrays = [a.astype(np.float32 if dtype == pb.DTYPE_FLOAT32 else np.int64).reshape(-1) for a in arrays]
        offsets = np.concatenate([[0], np.cumsum([a.nbytes for a in arrays])]).astype(np.int64)
        record.fields[name].CopyFrom(pb.BatchedTensor(data=b"".join(a.tobytes() for a in arrays), offsets=offsets.tobytes(),
                                                      dtype=dtype, trailing_shape=list(output.loss_fn_outputs[0][name].shape or [])[1:]))
    message = pb.ForwardBackwardOutput(loss_fn_output_type=output.loss_fn_output_type, loss_fn_outputs=[record], metrics=output.metrics)
    return message.SerializeToString()


def sample_response_to_proto(response: types.SampleResponse) -> bytes:
    message = pb.SampleResponse()
    for sequence in response.sequences:
        entry = message.sequences.add(stop_reason=_STOP_REASONS[sequence.stop_reason],
                                      tokens=np.asarray(sequence.tokens, dtype=np.int32).tobytes())
        if sequence.logprobs is not None:
            entry.logprobs = np.asarray(sequence.logprobs, dtype=np.float32).tobytes()
    return message.SerializeToString()


# ---- the service ---------------------------------------------------------------------------------
class TinkerStub:
    """`with TinkerStub(local) as stub:` serves on stub.base_url until the block ends (or MAX_LIFETIME_SECONDS)."""

    def __init__(self, local: Any, max_lifetime_s: float = MAX_LIFETIME_SECONDS):
        self.local = local
        self.session_id = f"stub-{uuid.uuid4().hex[:8]}"
        self.models: dict[str, Any] = {}  # SDK model id -> LocalTrainingClient
        self.samplers: dict[str, tuple[Any, str | None]] = {}  # sampling_session_id -> (LocalSamplingClient, SDK model_path)
        self.local_to_sdk: dict[str, str] = {}  # local store run id -> SDK model id
        self.futures: dict[str, tuple[concurrent.futures.Future, Callable[[Any], tuple[str, bytes]]]] = {}
        self.calls: list[str] = []  # endpoint of every request, in arrival order
        self.unhandled: list[str] = []
        self.finished: list[dict] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="tinker-stub")
        self._watchdog = threading.Timer(max_lifetime_s, self.stop)
        self._watchdog.daemon = True
        self._stopped = False

    def __enter__(self) -> "TinkerStub":
        self._thread.start()
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()

    # ---- paths and ids ------------------------------------------------------------------------
    def to_sdk_path(self, path: str) -> str:
        run_id, rest = path.removeprefix("tinker://").split("/", 1)
        return f"tinker://{self.local_to_sdk[run_id]}/{rest}"

    def to_local_path(self, path: str) -> str:
        if not path.startswith("tinker://") or "/" not in path.removeprefix("tinker://"):
            raise HttpError(400, f"invalid tinker path {path!r}")
        model_id, rest = path.removeprefix("tinker://").split("/", 1)
        local_id = next((local for local, sdk in self.local_to_sdk.items() if sdk == model_id), None)
        if local_id is None:
            raise HttpError(404, f"training run {model_id} not found")
        return f"tinker://{local_id}/{rest}"

    def _model(self, model_id: str) -> Any:
        if model_id not in self.models:
            raise HttpError(404, f"model {model_id} not found")
        return self.models[model_id]

    def _future(self, local_future: Any, encode: Callable[[Any], tuple[str, bytes]], model_id: str | None = None, **extra: Any) -> dict:
        request_id = f"req-{next(self._ids)}"
        self.futures[request_id] = (local_future.future() if hasattr(local_future, "future") else local_future, encode)
        return types.UntypedAPIFuture(request_id=request_id, model_id=model_id, **extra).model_dump(mode="json", exclude_none=True)

    def _registered(self, model_id: str, reply: dict) -> Callable[[Any], tuple[str, bytes]]:
        """An encoder for a model-creating future: file the new local client under the SDK's model id, then reply."""
        def encode(client: Any) -> tuple[str, bytes]:
            self.models[model_id] = client
            self.local_to_sdk[client.model_id] = model_id
            return _json_reply(reply)
        return encode

    # ---- endpoints ------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
        endpoint = path.removeprefix("/api/v1/")
        self.calls.append(endpoint)
        payload = json.loads(body) if body and "json" in content_type else {}
        if method == "GET" and (match := re.fullmatch(r"samplers/(.+)", endpoint)):
            if match.group(1) not in self.samplers:
                raise HttpError(404, f"sampler {match.group(1)} not found")
            client, model_path = self.samplers[match.group(1)]
            return _json({"sampler_id": match.group(1), "base_model": client.base_model, "model_path": model_path})
        if method == "POST" and (match := re.fullmatch(r"sessions/(.+)/finish", endpoint)):
            self.finished.append({"session_id": match.group(1), **payload})
            return _json({})
        handler = getattr(self, "_post_" + endpoint.replace("/", "_"), None) if method == "POST" else None
        if handler is None:
            self.unhandled.append(f"{method} {endpoint}")
            raise HttpError(404, f"the tinker stub does not implement {method} /api/v1/{endpoint}")
        return handler(body if endpoint == "forward_backward" else payload)

    def _post_client_config(self, _: dict) -> tuple[int, str, bytes]:
        return _json({"pjwt_auth_enabled": False, "use_pyqwest_transport": False, "parallel_fwdbwd_chunks": False})

    def _post_client_dynamic_config(self, _: dict) -> tuple[int, str, bytes]:
        return _json({})

    def _post_create_session(self, _: dict) -> tuple[int, str, bytes]:
        return _json({"session_id": self.session_id})

    def _post_session_heartbeat(self, _: dict) -> tuple[int, str, bytes]:
        return _json({})

    def _post_create_model(self, payload: dict) -> tuple[int, str, bytes]:
        request = types.CreateModelRequest.model_validate(payload)
        model_id = f"{request.session_id}:train:{request.model_seq_id}"
        lora = request.lora_config
        created = self.local.create_lora_training_client(request.base_model, rank=lora.rank, seed=lora.seed, train_mlp=lora.train_mlp,
                                                         train_attn=lora.train_attn, train_unembed=lora.train_unembed,
                                                         user_metadata=request.user_metadata, optimizer=request.optimizer_config)
        return _json(self._future(created, self._registered(model_id, {"model_id": model_id, "type": "create_model"})))

    def _post_load_weights(self, payload: dict) -> tuple[int, str, bytes]:
        request = types.LoadWeightsRequest.model_validate(payload)
        if request.session_id is None:
            raise HttpError(400, "the stub implements create-via-load (session_id + model_seq_id) only")
        model_id = f"{request.session_id}:train:{request.model_seq_id}"
        load = (self.local.create_training_client_from_state_with_optimizer if request.optimizer
                else self.local.create_training_client_from_state)
        created = load(self.to_local_path(request.path), user_metadata=request.user_metadata)
        return _json(self._future(created, self._registered(model_id, {"path": request.path, "model_id": model_id, "type": "load_weights"})))

    def _post_get_info(self, payload: dict) -> tuple[int, str, bytes]:
        model_id = payload["model_id"]
        info = self._model(model_id).get_info().model_dump(mode="json", exclude_none=True)
        return _json({**info, "model_id": model_id})

    def _post_forward_backward(self, body: bytes) -> tuple[int, str, bytes]:
        request = pb.ForwardBackwardRequest()
        request.ParseFromString(body)
        client = self._model(request.model_id)
        run = client.forward if request.forward_only else client.forward_backward
        submitted = run(datums_from_proto(request), request.loss_fn, dict(request.loss_fn_config) or None)
        return _json(self._future(submitted, lambda out: ("application/x-protobuf", forward_backward_output_to_proto(out)), request.model_id))

    def _post_optim_step(self, payload: dict) -> tuple[int, str, bytes]:
        request = types.OptimStepRequest.model_validate(payload)
        submitted = self._model(request.model_id).optim_step(request.optim_params)
        return _json(self._future(submitted, lambda out: _json_reply(out.model_dump(mode="json")), request.model_id))

    def _post_save_weights(self, payload: dict) -> tuple[int, str, bytes]:
        request = types.SaveWeightsRequest.model_validate(payload)
        submitted = self._model(request.model_id).save_state(request.path, ttl_seconds=request.ttl_seconds, overwrite=request.overwrite,
                                                             user_metadata=request.user_metadata)
        return _json(self._future(submitted, lambda out: _json_reply({"path": self.to_sdk_path(out.path), "type": "save_weights"}), request.model_id))

    def _post_save_weights_for_sampler(self, payload: dict) -> tuple[int, str, bytes]:
        request = types.SaveWeightsForSamplerRequest.model_validate(payload)
        client = self._model(request.model_id)
        if request.path is not None:
            submitted = client.save_weights_for_sampler(request.path, ttl_seconds=request.ttl_seconds, user_metadata=request.user_metadata)
            return _json(self._future(submitted, lambda out: _json_reply({"path": self.to_sdk_path(out.path), "type": "save_weights_for_sampler"}), request.model_id))
        sampling_session_id = f"{self.session_id}:sample:{request.sampling_session_seq_id}"

        def ephemeral(sampler: Any) -> tuple[str, bytes]:
            self.samplers[sampling_session_id] = (sampler, None)
            return _json_reply({"sampling_session_id": sampling_session_id, "type": "save_weights_for_sampler"})

        return _json(self._future(client.save_weights_and_get_sampling_client(kind=request.kind), ephemeral, request.model_id))

    def _post_create_sampling_session(self, payload: dict) -> tuple[int, str, bytes]:
        request = types.CreateSamplingSessionRequest.model_validate(payload)
        local_path = self.to_local_path(request.model_path) if request.model_path else None
        sampler = self.local.create_sampling_client(model_path=local_path, base_model=None if local_path else request.base_model).result()
        sampling_session_id = f"{request.session_id}:sample:{request.sampling_session_seq_id}"
        self.samplers[sampling_session_id] = (sampler, request.model_path)
        return _json({"sampling_session_id": sampling_session_id})

    def _post_asample(self, payload: dict) -> tuple[int, str, bytes]:
        request = types.SampleRequest.model_validate(payload)
        if request.sampling_session_id not in self.samplers:
            raise HttpError(404, f"sampling session {request.sampling_session_id} not found")
        sampler = self.samplers[request.sampling_session_id][0]
        submitted = sampler.sample(request.prompt, request.num_samples, request.sampling_params)
        ids = [f"{request.sampling_session_id}:{request.seq_id}:{index}" for index in range(request.num_samples)]
        return _json(self._future(submitted, lambda out: ("application/x-protobuf", sample_response_to_proto(out)), sample_sequence_ids=ids))

    def _post_retrieve_future(self, payload: dict) -> tuple[int, str, bytes]:
        request_id = payload["request_id"]
        if request_id not in self.futures:
            raise HttpError(404, f"future {request_id} not found")
        future, encode = self.futures[request_id]
        try:
            result = future.result(timeout=LONG_POLL_SECONDS)
        except concurrent.futures.TimeoutError:
            return _json({"type": "try_again", "request_id": request_id, "queue_state": "active"})
        except tinker.APIStatusError as exc:
            self.futures.pop(request_id)
            return _json({"error": str(exc), "category": "user" if exc.status_code < 500 else "server"})
        except Exception as exc:  # noqa: BLE001 - a failed request, reported to the SDK as such
            self.futures.pop(request_id)
            return _json({"error": f"{type(exc).__name__}: {exc}", "category": "server"})
        content_type, reply = encode(result)
        self.futures.pop(request_id)
        return 200, content_type, reply


def _json_reply(obj: Any) -> tuple[str, bytes]:
    return "application/json", json.dumps(obj).encode()


def _json(obj: Any) -> tuple[int, str, bytes]:
    return (200, *_json_reply(obj))


def _handler_for(stub: TinkerStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's httpx pools expect

        def _serve(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                status, content_type, reply = stub.handle(method, self.path.split("?", 1)[0], body, self.headers.get("Content-Type", ""))
            except HttpError as exc:
                status, content_type, reply = exc.status, "application/json", json.dumps({"detail": exc.detail}).encode()
            except tinker.APIStatusError as exc:  # refused by the local client at submit time
                status, content_type, reply = exc.status_code, "application/json", json.dumps({"detail": str(exc)}).encode()
            except Exception as exc:  # noqa: BLE001 - a stub bug: fail the SDK call fast (400 is not retried)
                status, content_type, reply = 400, "application/json", json.dumps({"detail": f"stub: {type(exc).__name__}: {exc}"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self._serve("POST")

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
