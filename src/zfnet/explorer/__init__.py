"""The explorer: `zfnet serve` (a web page to look inside a network) and `zfnet atlas` (the
same per-unit views as a static site)."""
