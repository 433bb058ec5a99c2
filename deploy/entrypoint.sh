#!/bin/sh
# The generate image's entrypoint: `docker run IMAGE [generate options]` generates, as it always has;
# `docker run -p 8000:8000 IMAGE serve [serve options]` serves the API (on $CHARLSTM_HOST:$CHARLSTM_PORT).
set -eu
case "${1:-}" in
    serve) shift; exec charlstm serve "$@" ;;
    generate) shift ;;
esac
exec charlstm generate "$@"
