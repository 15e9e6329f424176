"""Causal tracing (the paper's foil): corrupt the concept's text, restore one site's clean state at a time (names
load on first use)."""

from typing import TYPE_CHECKING

from locoedit.core.lazy import lazy_exports

if TYPE_CHECKING:
    from locoedit.trace.request import TraceRequest
    from locoedit.trace.result import SiteEffect, TraceResult
    from locoedit.trace.sites import Site, denoiser_sites, text_encoder_sites
    from locoedit.trace.tracing import select_sites, trace

__all__ = [
    "Site",
    "SiteEffect",
    "TraceRequest",
    "TraceResult",
    "denoiser_sites",
    "select_sites",
    "text_encoder_sites",
    "trace",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "TraceRequest": "request",
        **dict.fromkeys(("SiteEffect", "TraceResult"), "result"),
        **dict.fromkeys(("Site", "denoiser_sites", "text_encoder_sites"), "sites"),
        **dict.fromkeys(("select_sites", "trace"), "tracing"),
    },
)
