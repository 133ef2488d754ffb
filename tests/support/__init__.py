"""Test helpers shared by several tiers (fault injection on the network, ...)."""
