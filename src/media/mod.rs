//! Codecs and media helpers.
