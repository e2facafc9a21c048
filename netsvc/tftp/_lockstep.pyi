# Types of the C module netsvc/tftp/_lockstep.c (see netsvc/tftp/lockstep.py).
from typing import Any

def pump(state: Any, board: Any) -> tuple[int, bytes | None]: ...
def timer_sample(
    srtt: float | None, rttvar: float, rtt: float, minimum: float, maximum: float
) -> tuple[float, float, float]: ...
