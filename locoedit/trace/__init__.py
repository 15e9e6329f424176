"""Causal tracing (the paper's foil): corrupt the concept's text, restore one site's clean state at a time."""

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
