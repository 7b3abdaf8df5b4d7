//! DHCPv4 server for network boot.
