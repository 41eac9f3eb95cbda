"""Secure aggregation (SecAgg, Bonawitz et al. 2017): ``SecureAggregation`` (:mod:`.strategy`),
each client's vector (:mod:`.vector`), the pure protocol of both sides (:mod:`.client`,
:mod:`.server`, :mod:`.shares`, re-exported by :mod:`.protocol`) on the primitives
(:mod:`.crypto`: X25519, HKDF, ChaCha20, ChaCha20-Poly1305; :mod:`.shamir`; :mod:`.quantize`).
The wire and the sessions are pyfed.server.secure_round's and pyfed.client.secure_rounds'.
Nothing is imported here: ``cryptography`` loads only when used."""
