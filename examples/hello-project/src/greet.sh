#!/bin/sh
# The "project" this example pipeline builds and tests: a tiny greeter.
echo "hello, ${1:-world}"
