"""Differential privacy: ``DifferentialPrivacy`` (:mod:`.strategy`), the RDP accountant
(:mod:`.accountant`), clipping, noise and adaptive clipping's rules (:mod:`.calibration`), the
clipped sum (:mod:`.clipped_sum`), the client's clipping (:mod:`.client_clipping`) and the
refusals (:mod:`.checks`). Nothing is imported here: dp-accounting loads only when used."""
