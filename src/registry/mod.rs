//! The stream registry: named streams, tracks, one publisher and many bounded readers.
