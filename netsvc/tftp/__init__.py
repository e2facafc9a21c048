"""TFTP (RFC 1350 with the option extensions of RFC 2347, 2348, 2349 and 7440).

The pure core lives here and imports no Twisted: :mod:`netsvc.tftp.packets` (wire format),
:mod:`netsvc.tftp.options` (option negotiation policy) and :mod:`netsvc.tftp.netascii`
(streaming netascii codec).
"""
