//! Read-only TFTP server.
