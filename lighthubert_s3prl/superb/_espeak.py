"""Reproducible espeak-ng synthesis through the ``espeakng-loader`` wheel (no apt, no CLI binary).

libespeak-ng keeps hidden state between calls (and seeds its jitter from the clock), so the same request
synthesised twice in one process gives different samples. What does reproduce is a fixed state: a
helper process initialises the library once, speaks one fixed warm-up phrase, and from then on forks a
child per request; each child seeds the library from a hash of its request and synthesises once. Every
request therefore starts from the same state and gives the same samples whatever the order of requests
or the process that asks.

The helper is started from this file's path, never as a package module, so it imports only the standard
library and ctypes: forking a process that has numpy (6 ms) or torch (30 ms) loaded costs far more than
synthesising a word (2 ms). This module must stay free of third-party imports for that reason.
"""
from __future__ import annotations

import collections
import ctypes
import hashlib
import json
import os
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Deque, Iterable, Iterator, Optional

# the wheel we validated; other versions synthesise different (still deterministic) audio
ESPEAKNG_LOADER_VERSION = "0.2.4"

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 0x1
_ENDPAUSE = 0x1000
_POS_CHARACTER = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "pitch_range": 4, "word_gap": 7}
_WARM_UP = "warm up"
_FRAME = struct.Struct("<BQ")  # status (0 ok, 1 error), payload length


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded or refused a request."""


@dataclass(frozen=True)
class SynthRequest:
    """One utterance: text plus an espeak voice (``<language file>+<variant>``) and its prosody."""

    text: str
    voice: str
    rate: int = 175  # words per minute
    pitch: int = 50  # 0-99
    pitch_range: int = 50  # 0-100
    word_gap: int = 0  # extra pause between words, units of 10 ms
    volume: int = 100

    def seed(self) -> int:
        blob = json.dumps(asdict(self), sort_keys=True).encode("utf-8")
        return int.from_bytes(hashlib.sha1(blob).digest()[:4], "little") & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------------
# helper-process side


class _Library:
    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise EspeakError(
                f"espeakng-loader is not installed; run `pip install espeakng-loader=={ESPEAKNG_LOADER_VERSION}`"
            ) from exc
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Info.restype = ctypes.c_char_p
        # the library wants the directory that *contains* espeak-ng-data
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(),
                                                 _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise EspeakError(f"espeak_Initialize failed with data in {data_parent}")
        self.version = (lib.espeak_Info(None) or b"?").decode()
        self._chunks: list = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                         ctypes.c_void_p)
        self._callback = callback_type(self._on_audio)  # keep a reference: C holds only a pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def _on_audio(self, wav, n_samples, _events) -> int:
        if n_samples > 0:
            self._chunks.append(ctypes.string_at(wav, n_samples * 2))
        return 0

    def synthesize(self, req: SynthRequest) -> bytes:
        if self._lib.espeak_SetVoiceByName(req.voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {req.voice!r} (names are case-sensitive file names, "
                              "e.g. 'en-US+f3', 'en-GB-x-rp+m2')")
        for name, code in _PARAM.items():
            self._lib.espeak_SetParameter(code, int(getattr(req, name)), 0)
        text = req.text.encode("utf-8")
        self._chunks = []
        self._lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        self._lib.espeak_Synchronize()
        return b"".join(self._chunks)

    def synthesize_seeded(self, req: SynthRequest) -> bytes:
        self._lib.espeak_ng_SetRandSeed(req.seed())
        return self.synthesize(req)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EspeakError("espeak helper process ended unexpectedly")
    return data


def _frame(status: int, payload: bytes) -> bytes:
    return _FRAME.pack(status, len(payload)) + payload


def _run_child(lib: _Library, req: SynthRequest, fd: int) -> None:
    try:
        frame = _frame(0, lib.synthesize_seeded(req))
        code = 0
    except BaseException as exc:  # report everything, the parent decides
        frame = _frame(1, f"{type(exc).__name__}: {exc}".encode())
        code = 1
    _write_all(fd, frame)
    os._exit(code)


def _serve() -> None:
    """Helper-process loop: one JSON request per stdin line, one frame per request on stdout."""
    out = sys.stdout.fileno()
    try:
        lib = _Library()
        lib.synthesize(SynthRequest(_WARM_UP, "en-US"))  # fixed state that every child starts from
    except BaseException as exc:
        _write_all(out, _frame(1, f"{type(exc).__name__}: {exc}".encode()))
        return
    _write_all(out, _frame(0, json.dumps({"sample_rate": lib.sample_rate, "version": lib.version}).encode()))
    for line in sys.stdin.buffer:
        req = SynthRequest(**json.loads(line))
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _run_child(lib, req, write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            frame = pipe.read()
        _, status = os.waitpid(pid, 0)
        if len(frame) < _FRAME.size or _FRAME.unpack_from(frame)[1] != len(frame) - _FRAME.size:
            frame = _frame(1, f"synthesis process died (wait status {status}) on {req.text!r}".encode())
        _write_all(out, frame)


# ----------------------------------------------------------------------------------------------------
# caller side


class EspeakSynthesizer:
    """Client of one helper process. Use as a context manager; ``map`` pipelines requests."""

    def __init__(self) -> None:
        if not hasattr(os, "fork"):
            raise EspeakError("deterministic synthesis needs os.fork (Linux or macOS)")
        self._proc: Optional[subprocess.Popen] = None
        self.sample_rate = 0
        self.version = ""

    def __enter__(self) -> "EspeakSynthesizer":
        self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        hello = json.loads(self._receive().decode())
        self.sample_rate, self.version = int(hello["sample_rate"]), str(hello["version"])
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()

    def _send(self, req: SynthRequest) -> None:
        self._proc.stdin.write(json.dumps(asdict(req)).encode() + b"\n")
        self._proc.stdin.flush()

    def _receive(self) -> bytes:
        status, size = _FRAME.unpack(_read_exact(self._proc.stdout, _FRAME.size))
        payload = _read_exact(self._proc.stdout, size) if size else b""
        if status != 0:
            raise EspeakError(payload.decode(errors="replace"))
        return payload

    def synthesize(self, req: SynthRequest) -> bytes:
        """Little-endian int16 mono samples at ``self.sample_rate``."""
        self._send(req)
        return self._receive()

    def map(self, requests: Iterable[SynthRequest], window: int = 3) -> Iterator[bytes]:
        """Like ``synthesize`` over ``requests`` in order, keeping the helper busy while the caller works."""
        pending: Deque[SynthRequest] = collections.deque()
        try:
            for req in requests:
                self._send(req)
                pending.append(req)
                if len(pending) >= window:
                    pending.popleft()
                    yield self._receive()
            while pending:
                pending.popleft()
                yield self._receive()
        finally:
            # a caller that stops early must not leave answers in the pipe for the next request
            while pending:
                pending.popleft()
                try:
                    self._receive()
                except EspeakError:
                    pass


if __name__ == "__main__":
    _serve()
