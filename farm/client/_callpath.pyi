"""Types of the compiled call path (callpath.c)."""

from typing import Any, Optional, Sequence, Tuple

MAX_ARGS: int

class CallPath:
    sent: bool
    received: int
    def __init__(
        self,
        sock: Any,
        function_id: int,
        session: Any,
        array_type: type,
        plan: Optional[Sequence[Tuple[str, Optional[str], int, int]]],
        returns_bool: bool,
        bail: object,
        not_a_result: object,
    ) -> None: ...
    def call(self, request_id: int, args: Tuple[Any, ...]) -> Any: ...
    def received_bytes(self) -> bytes: ...
