"""What the two widgets (:class:`~nbchat.Chat` and :class:`~nbchat.Compare`) share as
anywidgets: the one front-end bundle, where their pane commands run, and how a live
pane shows in a notebook.

The bundle (``static/widget.js`` and ``static/widget.css``, built from ``js/``) holds
both panes; its ``render`` draws the compare pane for a model whose ``kind`` trait is
``"compare"`` and the chat pane otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

__all__ = ["CSS", "ESM", "display_live", "in_kernel", "keep_pane_messages_on_their_subshell"]

_STATIC = Path(__file__).parent / "static"
_MISSING_BUNDLE = """
export default { render({ el }) {
  el.textContent = "nbchat: the front end is not built. Run `pip install -e .` (needs Node 20) " +
    "or install nbchat from a wheel.";
} };
"""


def _asset(name: str, fallback: str) -> Path | str:
    path = _STATIC / name
    return path if path.exists() else fallback


# The widgets' _esm and _css: the built files, or a module saying the build is missing.
ESM: Final = _asset("widget.js", _MISSING_BUNDLE)
CSS: Final = _asset("widget.css", "")


def keep_pane_messages_on_their_subshell(comm: object) -> None:
    """Let pane commands run on the kernel subshell the front end sent them to.

    JupyterLab >= 4.4 sends comm messages to a subshell when the kernel has them
    (ipykernel >= 7), so Stop works while the main thread blocks in ``reply.wait()``.
    But ipykernel 7.4 re-routes a comm's incoming messages to the subshell of the
    comm's last outgoing message; ours go out from the client thread, parented to the
    running cell on the main shell, which would queue a Stop behind the very cell it
    should end. Returning the message's own subshell keeps it where the front end put it.
    """
    if hasattr(comm, "_reply_subshell_for"):
        comm._reply_subshell_for = lambda _data, subshell_id: subshell_id


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (not a terminal IPython, not plain Python)."""
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.initialized() and hasattr(InteractiveShell.instance(), "kernel")


def display_live(widget: Any, plain: str) -> None:
    """Display ``widget``'s pane. In a kernel its ``text/plain`` is ``plain``: what a
    saved notebook shows where widgets do not run, where a repr taken now would be
    stale at once."""
    from IPython.display import display

    bundle = widget._repr_mimebundle_()
    if bundle is None:
        return
    data, metadata = bundle
    if in_kernel():
        data = {**data, "text/plain": plain}
    display(data, metadata=metadata, raw=True)  # type: ignore[no-untyped-call]
