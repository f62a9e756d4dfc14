//! First-boot software for staged Linux guests.
