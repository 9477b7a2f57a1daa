"""The policy as a network service: ``roboalign serve`` and the client policy_node uses.

The GPU is rarely on the robot's computer, and the model's torch / CUDA stack often cannot
share a Python environment with the ROS install. :class:`PolicyServer` loads one checkpoint
and serves its two paths, ``act`` (the chunk) and ``reason`` (the slow generation), plus its
``config``; :class:`RemotePolicy` is the same three calls on the robot's side, so
policy_node's gate, workers, chunk semantics and status (:mod:`.build`) are unchanged, and
reasoning still runs beside the action path (the reasoning thread has its own connection).

Transport: WebSockets (the ``websockets`` library; its sync API, a thread per connection) with
msgpack messages, as openpi's policy server: a framed, size-capped binary channel over one TCP
port that proxies and TLS handle, and a data-only encoding (maps, lists, strings, numbers,
bytes: no pickle, no code). gRPC would need generated stubs and a protobuf toolchain on both
machines for the same two calls.

Security (on by default): the server binds loopback unless told otherwise, and refuses to
start on any other address without a token (``--token-file``; the client sends it as
``Authorization: Bearer``) or mutual TLS. Messages are capped (``max_message``); a client
cannot name a file or a model; a malformed message gets an error reply and the connection
goes on; one client's failure never stops the others.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

PROTOCOL = 1
MAX_MESSAGE = 32 * 2**20      # bytes: two 1920x1080 RGB frames and change
MAX_IMAGE_PIXELS = 4096 * 4096
REASONINGS_KEPT = 8           # per client session: the ones an ``act`` may name
SESSIONS_KEPT = 64
log = logging.getLogger("roboalign.serve")


class RemoteError(RuntimeError):
    """The server is unreachable, slow, refused the request, or answered garbage."""


class ProtocolError(ValueError):
    """A message that is not what the protocol says (named in the reply)."""


# ----------------------------------------------------------------------------- messages


def pack(message: Mapping[str, Any]) -> bytes:
    """One message as msgpack bytes."""
    return msgpack.packb(message, use_bin_type=True)


def _no_ext(code: int, data: bytes):
    raise ProtocolError(f"msgpack extension type {code} is not accepted")


def unpack(data: bytes | str) -> dict[str, Any]:
    """Bytes -> a message (a msgpack map with a string ``op``), ProtocolError otherwise."""
    if not isinstance(data, bytes):
        raise ProtocolError("messages are binary (msgpack), got text")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext,
                                  max_bin_len=MAX_MESSAGE, max_str_len=2**20,
                                  max_array_len=2**16, max_map_len=2**10)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's
        raise ProtocolError(f"not a msgpack message ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("a message is a map with a string 'op'")
    return message


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """An array as ``{dtype, shape, data}`` (raw bytes, C order)."""
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def decode_array(field: Any, name: str, dtype: str, ndim: int,
                 max_elements: int = MAX_IMAGE_PIXELS * 3) -> np.ndarray:
    """``field`` as an array of ``dtype`` with ``ndim`` dimensions, checked byte for byte."""
    if not isinstance(field, dict) or set(field) != {"dtype", "shape", "data"}:
        raise ProtocolError(f"{name}: expected {{dtype, shape, data}}")
    shape, data = field["shape"], field["data"]
    if field["dtype"] != np.dtype(dtype).str:
        raise ProtocolError(f"{name}: dtype {field['dtype']!r}, expected {np.dtype(dtype).str}")
    if not (isinstance(shape, list) and len(shape) == ndim
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n for n in shape)):
        raise ProtocolError(f"{name}: shape {shape!r} is not {ndim} sizes")
    count = int(np.prod(shape)) if shape else 1
    if count > max_elements or not isinstance(data, bytes) \
            or len(data) != count * np.dtype(dtype).itemsize:
        raise ProtocolError(f"{name}: {len(data) if isinstance(data, bytes) else type(data)} "
                            f"bytes for shape {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode_observation(observation) -> dict[str, Any]:
    """An :class:`~roboalign_ros.model.Observation` for the wire."""
    return {"instruction": observation.instruction,
            "state": None if observation.state is None
            else encode_array(np.asarray(observation.state, np.float32)),
            "images": {name: encode_array(img) for name, img in observation.images.items()}}


def decode_observation(field: Any, config) -> Any:
    """A wire observation, checked against the served policy's config."""
    from roboalign_ros.model import Observation

    if not isinstance(field, dict) or not isinstance(field.get("instruction"), str) \
            or not isinstance(field.get("images"), dict):
        raise ProtocolError("observation: expected {instruction, state, images}")
    if set(field["images"]) != set(config.camera_names):
        raise ProtocolError(f"observation.images: cameras {sorted(field['images'])}, the "
                            f"policy's are {list(config.camera_names)}")
    images = {}
    for name, image in field["images"].items():
        images[name] = decode_array(image, f"images[{name!r}]", "|u1", 3)
        if images[name].shape[2] != 3:
            raise ProtocolError(f"images[{name!r}]: {images[name].shape}, expected HxWx3 RGB")
    state = None
    if field.get("state") is not None:
        state = decode_array(field["state"], "state", "<f4", 1, 4096)
    if config.state_dim and (state is None or state.shape != (config.state_dim,)):
        raise ProtocolError(f"observation.state: expected {config.state_dim} values")
    return Observation(images=images, state=state, instruction=field["instruction"])


def _output(out) -> dict[str, Any]:
    return {"chunk": encode_array(np.asarray(out.chunk, np.float32)),
            "reasoning": out.reasoning, "problems": list(out.problems),
            "timings": {k: float(v) for k, v in out.timings.items()},
            "reasoning_fresh": bool(out.reasoning_fresh),
            "generated_text": out.generated_text, "action_tokens": list(out.action_tokens)}


# ----------------------------------------------------------------------------- server


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port), ValueError naming what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address: {address!r} is not HOST:PORT")
    return host, int(port)


def read_token(path: str | Path) -> str:
    """A token file's token (whitespace stripped); ValueError if missing or too short."""
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ValueError(f"token file: {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ValueError(f"token file: {path}: the token needs at least 16 characters")
    return token


class PolicyServer:
    """Serves one loaded policy's ``config``, ``act`` and ``reason`` over WebSockets."""

    def __init__(self, policy, bind: str = "127.0.0.1:8765", *, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, mutual_tls: bool = False,
                 max_message: int = MAX_MESSAGE, limits=None) -> None:
        from .gate import InputLimits, tokenizer_counter

        host, self.port = parse_address(bind)
        self.host = host
        if not is_loopback(host) and token is None and not mutual_tls:
            raise ValueError(f"bind: {host} is not loopback: give a token file (--token-file) "
                             "or mutual TLS (--tls-cert, --tls-key, --tls-client-ca); the "
                             "server does not start unauthenticated off this machine")
        self.policy, self.token, self.ssl = policy, token, ssl_context
        self.max_message = max_message
        # the input bounds policy_node applies, applied again here: clients are not trusted
        self.limits = limits or InputLimits()
        self._count_tokens = tokenizer_counter(policy.tokenizer)
        self.config = policy.config.to_dict()
        self._act_lock = threading.Lock()     # one chunk at a time; reason may run beside it
        self._reason_lock = threading.Lock()
        # a client's reasonings, by its session (its action path and its reasoning thread
        # are two connections of one session), the newest sessions only
        self._sessions: OrderedDict[str, OrderedDict[int, Any]] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._server = None
        self.served = self.refused = 0

    def _authorize(self, connection, request):
        if self.token is None:
            return None
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return None
        self.refused += 1
        log.warning("refused %s: no valid token", connection.remote_address)
        return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is needed\n")

    def _session(self, message: dict) -> OrderedDict[int, Any]:
        key = message.get("session")
        if not (isinstance(key, str) and 16 <= len(key) <= 64):
            raise ProtocolError("session: a string of 16-64 characters")
        with self._sessions_lock:
            if key not in self._sessions:
                self._sessions[key] = OrderedDict()
                while len(self._sessions) > SESSIONS_KEPT:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(key)
            return self._sessions[key]

    def _handle(self, connection) -> None:
        for data in connection:
            request_id = None
            try:
                message = unpack(data)
                request_id = message.get("id")
                reply = self._dispatch(message)
            except ProtocolError as exc:
                reply = {"op": "error", "message": str(exc)}
            except Exception as exc:  # noqa: BLE001 - the model failed: say so, keep serving
                log.exception("request failed")
                reply = {"op": "error", "message": f"{type(exc).__name__}: {exc}"}
            reply["id"] = request_id if isinstance(request_id, int) else None
            connection.send(pack(reply))

    def _observation(self, message: dict):
        from .gate import instruction_problem

        observation = decode_observation(message.get("observation"), self.policy.config)
        problem = instruction_problem(observation.instruction, self.limits, self._count_tokens)
        for name, image in observation.images.items():
            h, w, _ = image.shape
            if w > self.limits.max_image_width or h > self.limits.max_image_height:
                problem = f"images[{name!r}]: {w}x{h} exceeds the server's max_image_* bounds"
        if problem:
            raise ProtocolError(problem)
        return observation

    def _dispatch(self, message: dict) -> dict:
        op = message["op"]
        if op == "config":
            return {"op": "config", "protocol": PROTOCOL, "config": self.config}
        reasonings = self._session(message)
        if op == "reason":
            observation = self._observation(message)
            with self._reason_lock:
                reasoning = self.policy.reason(observation)
            with self._sessions_lock:
                key = (max(reasonings) + 1) if reasonings else 1
                reasonings[key] = reasoning
                while len(reasonings) > REASONINGS_KEPT:
                    reasonings.popitem(last=False)
            self.served += 1
            return {"op": "reason", "reasoning_id": key, "text": reasoning.text,
                    "reasoning": reasoning.reasoning, "instruction": reasoning.instruction,
                    "seconds": reasoning.seconds}
        if op == "act":
            observation = self._observation(message)
            key = message.get("reasoning_id")
            if key is not None and key not in reasonings:
                raise ProtocolError(f"reasoning_id {key!r} is not one of this session's "
                                    f"newest {REASONINGS_KEPT}")
            seed = message.get("seed")
            if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
                raise ProtocolError("seed: an integer >= 0 or nil")
            with self._act_lock:
                out = self.policy.act(observation, reasonings.get(key), seed,
                                      fresh=bool(message.get("fresh")))
            self.served += 1
            return {"op": "act", "output": _output(out)}
        raise ProtocolError(f"op {op!r} is not one of config, act, reason")

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or Ctrl-C)."""
        from websockets.sync.server import serve

        with serve(self._handle, self.host, self.port, ssl=self.ssl,
                   process_request=self._authorize, max_size=self.max_message,
                   compression=None) as server:
            self._server = server
            log.info("serving %s on %s:%d (%s)", self.config.get("backbone"), self.host,
                     self.port, "token" if self.token else "TLS" if self.ssl else "loopback")
            server.serve_forever()

    def start(self) -> PolicyServer:
        """Serve from a background thread (tests, benchmarks); returns once listening."""
        thread = threading.Thread(target=self.serve_forever, daemon=True, name="serve")
        thread.start()
        deadline = time.monotonic() + 10
        while self._server is None and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._server is None:
            raise RuntimeError(f"server: not listening on {self.host}:{self.port}")
        return self

    def shutdown(self) -> None:
        """Stop serving (connections are closed)."""
        if self._server is not None:
            self._server.shutdown()


# ----------------------------------------------------------------------------- client


@dataclasses.dataclass(frozen=True)
class RemoteReasoning:
    """A reasoning generated on the server (``act`` names it by ``reasoning_id``)."""

    reasoning_id: int
    text: str
    reasoning: str | None
    instruction: str
    seconds: float


class RemotePolicy:
    """A served policy on the robot's side: ``config``, ``act``, ``reason``, ``predict``.

    Each calling thread has its own connection (the action path and the reasoning thread run
    at once). A failure (unreachable, ``timeout`` exceeded, refusal, garbage) raises
    :class:`RemoteError` naming the server; the next calls fail at once until the backoff
    (doubling from ``retry`` to ``max_retry`` s) has passed, then reconnect.
    """

    tokenizer = None   # instruction tokens are counted by the server's policy

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 2.0,
                 ssl_context: ssl.SSLContext | None = None, retry: float = 0.5,
                 max_retry: float = 5.0, max_message: int = MAX_MESSAGE) -> None:
        from roboalign_ros.model.config import VLAConfig

        self.address, self.timeout, self.token = address, timeout, token
        parse_address(address)
        self._ssl, self._max_message = ssl_context, max_message
        self._retry, self._max_retry = retry, max_retry
        self._local = threading.local()
        self._lock = threading.Lock()
        self._down_until, self._backoff = 0.0, retry
        self._ids, self._session = 0, secrets.token_hex(16)
        self._calls, self._cache = 0, None
        reply = self._call({"op": "config"})
        if reply.get("protocol") != PROTOCOL:
            raise RemoteError(f"server {address}: protocol {reply.get('protocol')!r}, this "
                              f"client speaks {PROTOCOL}")
        try:
            self.config = VLAConfig.from_dict(reply["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"server {address}: its config is not a VLAConfig ({exc})") \
                from None
        self.device = f"remote {address}"

    def _connect(self):
        from websockets.sync.client import connect

        scheme = "wss" if self._ssl is not None else "ws"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return connect(f"{scheme}://{self.address}", ssl=self._ssl, additional_headers=headers,
                       open_timeout=self.timeout, max_size=self._max_message,
                       compression=None, proxy=None)

    def _call(self, message: dict) -> dict:
        now = time.monotonic()
        with self._lock:
            if now < self._down_until:
                raise RemoteError(f"server {self.address}: unreachable; reconnecting in "
                                  f"{self._down_until - now:.1f} s")
            self._ids += 1
            message = {**message, "id": self._ids, "session": self._session}
        try:
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = self._connect()
            connection.send(pack(message))
            reply = unpack(connection.recv(timeout=self.timeout))
        except Exception as exc:  # noqa: BLE001 - every transport failure names the server
            self._drop(exc)
            raise RemoteError(f"server {self.address}: {_reason(exc, self.timeout)}") from None
        if reply.get("id") != message["id"]:
            self._drop(None)
            raise RemoteError(f"server {self.address}: answered request {reply.get('id')!r} "
                              f"to request {message['id']}")
        if reply.get("op") == "error":
            raise RemoteError(f"server {self.address}: {reply.get('message')}")
        if reply.get("op") != message["op"]:
            self._drop(None)
            raise RemoteError(f"server {self.address}: answered {reply.get('op')!r} to "
                              f"{message['op']!r}")
        with self._lock:
            self._backoff = self._retry
        return reply

    def _drop(self, exc: BaseException | None) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
        with self._lock:
            self._down_until = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self._max_retry)

    def reason(self, observation) -> RemoteReasoning:
        """Generate on the server (the slow path)."""
        r = self._call({"op": "reason", "observation": encode_observation(observation)})
        try:
            return RemoteReasoning(int(r["reasoning_id"]), str(r["text"]), r["reasoning"],
                                   str(r["instruction"]), float(r["seconds"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"server {self.address}: bad reason reply ({exc})") from None

    def act(self, observation, reasoning: RemoteReasoning | None = None,
            seed: int | None = None, fresh: bool = False):
        """A chunk from the server; ``timings['total']`` includes the transport."""
        from roboalign_ros.model.policy import PolicyOutput

        t0 = time.perf_counter()
        r = self._call({"op": "act", "observation": encode_observation(observation),
                        "reasoning_id": None if reasoning is None else reasoning.reasoning_id,
                        "seed": seed, "fresh": fresh})
        try:
            out = r["output"]
            chunk = decode_array(out["chunk"], "chunk", "<f4", 2)
            if chunk.shape != (self.config.horizon, self.config.action_dim) \
                    or not np.all(np.isfinite(chunk)):
                raise ValueError(f"chunk {chunk.shape}, expected finite "
                                 f"{(self.config.horizon, self.config.action_dim)}")
            result = PolicyOutput(chunk.copy(), out["reasoning"], list(out["action_tokens"]),
                                  list(out["problems"]), dict(out["timings"]),
                                  bool(out["reasoning_fresh"]), out["generated_text"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"server {self.address}: bad act reply ({exc})") from None
        result.timings["server_total"] = result.timings.get("total", 0.0)
        result.timings["total"] = time.perf_counter() - t0
        return result

    def predict(self, observation, seed: int | None = None):
        """As ``VLAPolicy.predict``: reason when due, then act on the newest reasoning.

        Due every ``reasoning_every`` calls, and on a new instruction.
        """
        n = self.config.reasoning_every
        fresh = bool(n) and (self._calls % n == 0 or self._cache is None
                             or self._cache.instruction != observation.instruction)
        t0 = time.perf_counter()
        if fresh:
            self._cache = self.reason(observation)
        self._calls += 1
        out = self.act(observation, self._cache if n else None, seed, fresh=fresh)
        if fresh:
            out.timings["generate"] = self._cache.seconds
        out.timings["total"] = time.perf_counter() - t0
        return out

    def warmup(self, calls: int = 1, reasoning: bool = False) -> None:
        """One round trip on a blank observation (the server warmed its model at start)."""
        from roboalign_ros.model import Observation

        h, w = self.config.image_size or (224, 224)
        obs = Observation({n: np.zeros((h, w, 3), np.uint8) for n in self.config.camera_names},
                          np.zeros(self.config.state_dim, np.float32), "warm up")
        for _ in range(calls):
            self.predict(obs, seed=0) if reasoning else self.act(obs, seed=0)
        self.reset()

    def reset(self) -> None:
        """Forget the cached reasoning and the call counter."""
        self._calls, self._cache = 0, None

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop(None)
        with self._lock:
            self._down_until, self._backoff = 0.0, self._retry


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout} s"
    if isinstance(exc, ProtocolError):
        return f"answered garbage ({exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def tls_context(cert: str | None, key: str | None, client_ca: str | None,
                server: bool) -> ssl.SSLContext | None:
    """A TLS context (None without certificates).

    The server: its certificate and key, and the CA its clients' certificates must be signed
    by (mutual TLS). A client: its own certificate and key, and the server's CA.
    """
    if not cert and not client_ca:
        return None
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose, cafile=client_ca)
    if cert:
        context.load_cert_chain(cert, key)
    if server and client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
    return context
