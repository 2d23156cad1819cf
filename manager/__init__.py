"""Productify Manager: the control plane daemon of the Productify framework."""

__version__ = "1.0.0"
