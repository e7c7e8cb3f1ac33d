"""The aiosip 0.2.0 adapter: the only package of aiosip-ws that imports aiosip.

:mod:`.compat` makes aiosip importable on Python 3.10-3.13, :mod:`.convert` turns
codec messages into aiosip's and back, :mod:`.application` holds ``Application``
and ``Dialog``, :mod:`.registry` and :mod:`.selection` choose a transport, and
:mod:`.registration` keeps a binding alive.  The defect register in
``docs/aiosip-0.2.0.rst`` lists every aiosip defect (D1-D21) this package works
around and every private aiosip attribute it touches.
"""
