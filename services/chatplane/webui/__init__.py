"""The static web server of the reference web chat (web/dist)."""
