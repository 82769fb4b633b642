"""The array backend: the only code that knows NumPy, torch and CuPy.

Arrays cross into the native core as NumPy buffers (host) or raw device pointers (CUDA);
``arrays`` tells where an array lives and converts to and from host buffers, ``device`` hands
CUDA arrays to ``exactforge._cuda``, and ``native`` loads the compiled modules."""
