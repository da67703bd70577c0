"""Public access tokens are minted without PyJWT's encoder, byte for byte
what it makes (no Ray: pure functions)."""

from __future__ import annotations

import jwt

from rayflow import _tokens


def test_a_minted_token_is_pyjwts_encoding_and_decodes() -> None:
    secret = "s3cret-" * 8
    for scopes in (
        _tokens.run_scopes("run_0123456789abcdef0123"),
        ["admin"],
        _tokens.session_scopes("session_1", 'chat:ü "quoted"'),
    ):
        claims = _tokens.token_claims(scopes, 60)
        assert _tokens.encode_claims(secret, claims) == jwt.encode(
            claims, secret, algorithm="HS256"
        )
        token = _tokens.mint_token(secret, scopes, 60)
        assert _tokens.decode_token(secret, token)["scopes"] == scopes
    other = _tokens.mint_token("another-secret-" * 4, ["admin"])
    assert jwt.decode(other, "another-secret-" * 4, algorithms=["HS256"], audience=_tokens.AUDIENCE)
