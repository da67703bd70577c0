"""The machinery behind the public API. Users never import from here."""
