"""The application: what a person runs, on top of every other package.

What belongs here: the `optibid` command line (`app.cli`), `optibid demo` (`app.demo`) and the supervisor of the
running platform's processes (`app.platform`: Dagster code server, webserver and daemon, the API, the CDC
consumer, Spark Connect). These may import any layer below: `serving_api`, `orchestration`, the domain assets,
the libraries (`ingestion`, `ml`, `expectations`) and `infra`.

What does not: nothing below imports `app`, and library logic does not live here; a command only parses its
options, reaches the services and calls the library function that does the work.
"""
