#!/bin/sh
# netcheck image entrypoint: `controller ARGS...` or `agent ARGS...`; anything else is run as is.
set -eu
case "${1:-}" in
    controller) shift; exec netcheck-controller "$@" ;;
    agent) shift; exec netcheck-agent "$@" ;;
    *) exec "$@" ;;
esac
