"""The last line of every screen: the keys that matter here."""

from __future__ import annotations

from typing import Any

from textual.widgets import Footer


class KeyFooter(Footer):
    """Textual's footer, composed again only when the keys it shows change. Textual's own rebuilds a
    widget per key whenever its screen comes back or the focus moves: 70 ms of CPU, more than half
    of opening a machine's details with 1,000 boots."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys_shown: tuple[tuple[Any, ...], ...] | None = None

    def _keys(self) -> tuple[tuple[Any, ...], ...]:
        return tuple(
            (binding.key, binding.description, binding.action, enabled, tooltip)
            for _node, binding, enabled, tooltip in self.screen.active_bindings.values()
            if binding.show
        )

    async def recompose(self) -> None:
        if not self.is_attached:  # its screen went meanwhile (a logout)
            return
        keys = self._keys()
        if keys == self._keys_shown:
            return
        self._keys_shown = keys
        await super().recompose()
