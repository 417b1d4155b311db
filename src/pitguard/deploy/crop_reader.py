"""Request parsing for the HTTP service: a classify request's PNG or .npy body as uint8 crops.

Every client mistake becomes a :class:`RequestError` whose message says what was wrong and how to
send the crops instead. Sizes are checked from headers before anything large is decoded.
"""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from pitguard.core.errors import PitguardError
from pitguard.deploy.predict import Predictor
from pitguard.deploy.serve_options import BODY_GRACE_S

NPY_CONTENT_TYPES = ("application/octet-stream", "application/x-npy")
NPY_MAGIC = b"\x93NUMPY"


class RequestError(Exception):
    """A client mistake: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class CropReader:
    """Turns a classify request into (N, 3, H, W) uint8 crops and their names, or a RequestError."""

    def __init__(
        self,
        predictor: Predictor,
        max_request_bytes: int,
        max_crops: int,
        body_timeout: float = 30.0,
        min_body_rate: float = 0.0,
    ) -> None:
        self.predictor = predictor
        self.body_timeout = body_timeout
        self.min_body_rate = min_body_rate
        self.size = predictor.size
        self.max_request_bytes = max_request_bytes
        self.max_crops = max_crops
        self.how = (
            f"send {self.size}x{self.size} RGB image crops (PNG; JPEG, BMP and TIFF are read too) "
            "as multipart/form-data field 'files', "
            f"or one uint8 .npy array (N, {self.size}, {self.size}, 3) or (N, 3, {self.size}, "
            f"{self.size}) as application/x-npy"
        )

    async def read(self, request: Request) -> tuple[np.ndarray, list[str | None]]:
        content_type = request.headers.get("content-type", "")
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind != "multipart/form-data" and kind not in NPY_CONTENT_TYPES:
            what = f"unsupported Content-Type {kind!r}" if kind else "missing Content-Type"
            raise RequestError(415, f"{what}; {self.how}")
        body = await self._read_body(request)
        if not body:
            raise RequestError(400, f"empty request body; {self.how}")
        if kind in NPY_CONTENT_TYPES:
            crops = await asyncio.to_thread(self._parse_npy, body, "the request body")
            return crops, [None] * len(crops)
        return await self._read_form(request, body)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise RequestError(400, f"invalid Content-Length {declared!r}") from None
            if length > limit:
                raise RequestError(413, self._too_large(length))
        chunks: list[bytes] = []
        total, start = 0, time.monotonic()
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), self._wait(start, total))
            except StopAsyncIteration:
                return b"".join(chunks)
            except TimeoutError:
                raise RequestError(408, self._too_slow(start, total)) from None
            except ClientDisconnect:
                raise RequestError(499, f"the client went away after {total} bytes") from None
            # Counted as read as well: a client may send no or a wrong Content-Length.
            total += len(chunk)
            if total > limit:
                raise RequestError(413, self._too_large(total, at_least=True))
            chunks.append(chunk)

    def _wait(self, start: float, total: int) -> float:
        """Seconds the next piece of a body may take: within ``body_timeout`` of its start, and
        soon enough to keep ``min_body_rate`` after the first ``BODY_GRACE_S``."""
        now = time.monotonic()
        wait = start + self.body_timeout - now
        if self.min_body_rate > 0:
            wait = min(wait, start + BODY_GRACE_S + total / self.min_body_rate - now)
        return max(wait, 0.0)

    def _too_slow(self, start: float, total: int) -> str:
        return (
            f"request body too slow: {total} bytes in {time.monotonic() - start:.1f} s; send "
            f"it within {self.body_timeout:g} s, at least {self.min_body_rate / 1024:g} KiB/s "
            f"after the first {BODY_GRACE_S:g} s"
        )

    def _too_large(self, n: int, at_least: bool = False) -> str:
        return (
            f"request body is {'over ' if at_least else ''}{n} bytes, the limit is "
            f"{self.max_request_bytes}; send fewer crops per request"
        )

    def _too_many(self, n: int | str) -> str:
        return f"{n} crops in one request, the limit is {self.max_crops}; split them over requests"

    async def _read_form(
        self, request: Request, body: bytes
    ) -> tuple[np.ndarray, list[str | None]]:
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        # The body was already read under the size limit; the form parser reads it again here.
        try:
            form = await Request(request.scope, replay).form(
                max_files=self.max_crops, max_fields=64
            )
        except (MultiPartException, StarletteHTTPException) as exc:
            detail = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc)
            if detail.startswith("Too many files"):
                raise RequestError(413, self._too_many(f"over {self.max_crops}")) from None
            raise RequestError(400, f"malformed multipart body ({detail}); {self.how}") from None
        try:
            uploads: list[tuple[str, bytes]] = []
            others: list[str] = []
            for key, value in form.multi_items():
                if isinstance(value, str):
                    continue
                if key == "files":
                    uploads.append((value.filename or f"files[{len(uploads)}]", await value.read()))
                else:
                    others.append(key)
        finally:
            await form.close()
        if not uploads:
            if others:
                raise RequestError(
                    400, f"file field {others[0]!r} is not read; name the field 'files'"
                )
            raise RequestError(400, f"no files in the form; {self.how}")
        if len(uploads) > self.max_crops:
            raise RequestError(413, self._too_many(len(uploads)))
        npy = [name for name, data in uploads if _is_npy(name, data)]
        if npy:
            if len(uploads) > 1:
                raise RequestError(
                    400,
                    f"{npy[0]!r} is a .npy file among {len(uploads)} files; send either PNG "
                    "files or a single .npy file per request",
                )
            name, data = uploads[0]
            crops = await asyncio.to_thread(self._parse_npy, data, f"file {name!r}")
            return crops, [None] * len(crops)
        crops = await asyncio.to_thread(self._decode_pngs, uploads)
        return crops, [name for name, _ in uploads]

    def _decode_pngs(self, uploads: list[tuple[str, bytes]]) -> np.ndarray:
        arrays = [self._decode_png(data, name) for name, data in uploads]
        return np.stack(arrays).transpose(0, 3, 1, 2).copy()

    def _decode_png(self, data: bytes, name: str) -> np.ndarray:
        """One crop file through the one decoder ``predict`` and training use (header first:
        size, mode and frame count are checked before any pixel is decoded)."""
        from pitguard.data.load import DecodeOptions, decode_bytes

        arr, problem = decode_bytes(data, name, DecodeOptions(size=self.size))
        if arr is None:
            reason = problem.reason if problem else "unreadable"
            raise RequestError(400, f"file {name!r}: {reason}; {self.how}")
        return arr

    def _parse_npy(self, data: bytes, label: str) -> np.ndarray:
        fmt = np.lib.format
        fp = io.BytesIO(data)
        # The header is checked before np.load so that a forged shape cannot make it allocate
        # more than was sent.
        try:
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _fortran, dtype = fmt.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        except ValueError as exc:
            raise RequestError(
                400, f"{label} is not a readable .npy array ({exc}); {self.how}"
            ) from None
        if dtype.hasobject:
            raise RequestError(
                400, f"{label} holds Python objects (pickled), which are never loaded; {self.how}"
            )
        if dtype != np.uint8:
            raise RequestError(
                400, f"{label} has dtype {dtype}, expected uint8; convert with arr.astype(np.uint8)"
            )
        if len(shape) not in (3, 4):
            raise RequestError(
                400, f"{label} has shape {shape}, expected (N, H, W, 3) or (N, 3, H, W)"
            )
        n = shape[0] if len(shape) == 4 else 1
        if n == 0:
            raise RequestError(400, f"{label} holds no crops (shape {shape}); {self.how}")
        if n > self.max_crops:
            raise RequestError(413, self._too_many(n))
        expected = int(np.prod(shape)) * dtype.itemsize
        if len(data) - fp.tell() != expected:
            raise RequestError(
                400,
                f"{label} is truncated or padded: shape {shape} needs {expected} bytes of data, "
                f"{len(data) - fp.tell()} were sent",
            )
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            return self.predictor.to_uint8(arr)
        except PitguardError as exc:
            raise RequestError(400, f"{label}: {exc}") from None
        except ValueError as exc:
            raise RequestError(400, f"{label} cannot be read as .npy ({exc})") from None


def _is_npy(name: str, data: bytes) -> bool:
    return name.lower().endswith(".npy") or data.startswith(NPY_MAGIC)
