"""Every shipped workflow, in build order: each entry returns its `Graph`."""

from __future__ import annotations

from .aligngen import wf_aligngen_normalized, wf_aligngen_single
from .dreamo import wf_dreamo_normalized, wf_id, wf_ip, wf_multi, wf_style, wf_tryon, wf_turbo
from .syncd import wf_consistent_batch, wf_kontext_normalized, wf_shared_reference

ALL = [wf_ip, wf_id, wf_multi, wf_tryon, wf_style, wf_turbo, wf_dreamo_normalized, wf_kontext_normalized,
       wf_consistent_batch, wf_shared_reference, wf_aligngen_single, wf_aligngen_normalized]
