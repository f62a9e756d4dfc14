//! Identity plugin for Linux guests.
