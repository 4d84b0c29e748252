"""Gateware of mpqaccel (Amaranth 0.5): the element-wise mixed-precision accelerator for the XC7Z020."""
