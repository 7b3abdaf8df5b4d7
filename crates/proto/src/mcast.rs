//! Multicast session descriptions the appliance hands to receivers.
