"""The base of every resource behind an interface (log clients, stores, indexes): an abstract
`close()` and `async with` support built on it."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class AsyncClosable(abc.ABC):
    """Something to close; `async with` closes it on the way out."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finishes work under way and releases the resources; idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
