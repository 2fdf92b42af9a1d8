"""A streaming polyphase resampler (rational ratio, Kaiser-windowed sinc).

``y[n] = sum_j x[base - j] * h[phase + j*U]`` with ``base, phase =
divmod(n*D + c, U)``: ``U/D`` is the ratio in lowest terms and ``c``
centres the filter, so output ``n`` sits exactly at input time ``n*D/U``.
State carries across calls: feeding audio in any chunk sizes gives the same
samples as resampling it in one go, and ``flush`` returns the tail.
"""

from __future__ import annotations

from math import gcd

import numpy as np
import numpy.typing as npt

_TAPS_PER_PHASE = 32
_KAISER_BETA = 8.6
_PASSBAND = 0.94  # fraction of the lower Nyquist frequency kept


def resample(audio: npt.NDArray[np.floating], from_rate: int, to_rate: int) -> npt.NDArray[np.float32]:
    """One-shot resampling of a whole signal (the same filter as the streaming form)."""
    r = StreamingResampler(from_rate, to_rate)
    return np.concatenate([r.process(audio), r.flush()])


class StreamingResampler:
    def __init__(self, from_rate: int, to_rate: int, *, taps_per_phase: int = _TAPS_PER_PHASE) -> None:
        if from_rate <= 0 or to_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {from_rate} and {to_rate}")
        g = gcd(from_rate, to_rate)
        self.up, self.down = to_rate // g, from_rate // g
        self.from_rate, self.to_rate = from_rate, to_rate
        self.taps = taps_per_phase
        length = taps_per_phase * self.up
        cutoff = 0.5 / max(self.up, self.down) * _PASSBAND  # cycles per upsampled sample
        # Centred exactly on the integer tap ``length // 2``, so the delay it adds is whole.
        self._centre = length // 2
        m = np.arange(length) - self._centre
        window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1 - (2 * m / length) ** 2, 0, None)))
        h = 2 * cutoff * np.sinc(2 * cutoff * m) * window / np.i0(_KAISER_BETA)
        h *= self.up / h.sum()  # unity gain after zero-stuffing by ``up``
        # [phase, i] = h[phase + (taps-1-i)*up]: reversed so it meets a forward input window.
        self._phases = h.reshape(taps_per_phase, self.up).T[:, ::-1].astype(np.float32).copy()
        # Input samples still needed, preceded by taps-1 zeros standing for "before the start".
        self._buf = np.zeros(taps_per_phase - 1, dtype=np.float32)
        self._buf_start = -(taps_per_phase - 1)  # input index of _buf[0]
        self._consumed = 0
        self._produced = 0

    def _base(self, n: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        return np.divmod(n * self.down + self._centre, self.up)

    def process(self, samples: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Resample the next piece of a stream; returns every output sample now determined."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, x])
        self._consumed += len(x)
        # Outputs whose newest input (base) is already here.
        last_n = ((self._consumed - 1) * self.up - self._centre) // self.down
        return self._render(last_n + 1)

    def _render(self, upto: int) -> npt.NDArray[np.float32]:
        if upto <= self._produced:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._produced, upto, dtype=np.int64)
        base, phase = self._base(n)
        need = int(base[-1]) + 1 - self._buf_start
        if need > len(self._buf):  # the flush reads past the end: zeros
            self._buf = np.concatenate([self._buf, np.zeros(need - len(self._buf), dtype=np.float32)])
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, self.taps)
        out = np.einsum("nk,nk->n", windows[base - (self.taps - 1) - self._buf_start], self._phases[phase])
        self._produced = upto
        # Forget inputs no later output can reach.
        next_base = int(self._base(np.asarray([upto]))[0][0])
        drop = min(max(0, next_base - self.taps + 1 - self._buf_start), len(self._buf))
        self._buf = self._buf[drop:]
        self._buf_start += drop
        return np.asarray(out, dtype=np.float32)

    def flush(self) -> npt.NDArray[np.float32]:
        """The remaining outputs, up to ``ceil(inputs * to_rate / from_rate)`` in total."""
        total = -(-self._consumed * self.up // self.down)
        return self._render(total)
