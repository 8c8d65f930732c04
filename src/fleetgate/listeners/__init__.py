"""Device listeners: the asyncio shells around the sans-I/O protocol cores.

Each listener accepts devices, feeds their bytes to its protocol core and hands the
records to the pipeline, acknowledging only what the pipeline says is safe.
"""
