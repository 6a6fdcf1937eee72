"""The sample shapes a model family accepts, given to the data layer as values (frame and side multiples)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameRule:
    """Valid sample shapes: frames = temporal_multiple * k + 1, sides multiples of spatial_multiple."""

    temporal_multiple: int
    spatial_multiple: int
    reason: str = ""  # why the rule holds, added to the adjustment warning

    def frames_down(self, num_frames: int) -> int:
        """Largest valid frame count <= num_frames (at least 1)."""
        if num_frames < 1:
            return 1
        return (num_frames - 1) // self.temporal_multiple * self.temporal_multiple + 1

    def is_valid_frames(self, num_frames: int) -> bool:
        return num_frames >= 1 and (num_frames - 1) % self.temporal_multiple == 0

    def side_down(self, pixels: int) -> int:
        return max(self.spatial_multiple, pixels // self.spatial_multiple * self.spatial_multiple)

    def adjust_frames(self, num_frames: int, what: str) -> int:
        """Adjust a requested frame count down to the rule, warning with the reason."""
        fixed = self.frames_down(num_frames)
        if fixed != num_frames:
            logger.warning(
                "%s=%d breaks the frame rule (frames = %dk+1); using %d%s",
                what,
                num_frames,
                self.temporal_multiple,
                fixed,
                f": {self.reason}" if self.reason else "",
            )
        return fixed
