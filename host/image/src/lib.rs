//! Disk images: partition tables, file systems copied out to trees and back in.
