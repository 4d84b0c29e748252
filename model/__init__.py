"""Training side of mpqaccel: quantizers, networks, IMQ, the integer golden model and the image export."""
