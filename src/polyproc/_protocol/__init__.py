"""Sans-IO protocol code: frames, message types and authentication, bytes in and bytes out.

* ``framing``: a Connection's frame (16-byte header, kinds, out-of-band buffer table);
  the pool's channels are Connections and use it too.
* ``compact``: the manager's frame (5 bytes: ``length:u32 op:u8``), its ``Op`` enum and
  ``FrameDecoder``.
* ``queueframe``: a Queue item's header in its pipe.
* ``auth``: the HMAC challenge, both ways.

Nothing here reads or writes: ``_transport`` moves the bytes.
"""
