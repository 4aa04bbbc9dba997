"""Sans-IO protocol code: frames, message types and authentication, bytes in and bytes out."""
