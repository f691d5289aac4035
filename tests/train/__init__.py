"""Tests of trackserve.train."""
