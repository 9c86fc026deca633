"""The dated price catalog: hosted models' token prices and GPU-hour prices, each with its source.

Low in the layers (it needs only the config schemas), so the data audit and the exporters can
price training tokens without importing economics.
"""
