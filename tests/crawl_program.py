"""A real Scrapy crawl for tests/test_real_programs.py (run as a script, unmodified Scrapy).

``python tests/crawl_program.py SITE_URL FOLDER``: crawls the site of tests/crawl_site.py with
``DOWNLOAD_TIMEOUT`` 1 s and one retry, and meets the test (:mod:`tests.meeting`, in FOLDER)
twice: ``crawling`` once the index page is in (before its links are followed), and ``done``
after the crawl, with Scrapy's own stats written to ``FOLDER/stats.json`` (the numeric ones),
before the reactor stops. Scrapy installs its reactor itself (the asyncio one).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.utils.defer import maybe_deferred_to_future

from tests.meeting import meet

SETTINGS = {
    "DOWNLOAD_TIMEOUT": 1,
    "RETRY_TIMES": 1,
    "CONCURRENT_REQUESTS": 16,
    "ROBOTSTXT_OBEY": False,
    "TELNETCONSOLE_ENABLED": False,
    "LOG_LEVEL": "WARNING",
}


class Walker(scrapy.Spider):
    """Follows every link of the index page once."""

    name = "walker"

    def __init__(self, site: str, folder: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = [site]
        self.folder = Path(folder)

    async def parse(self, response: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if response.url.rstrip("/") == self.start_urls[0].rstrip("/"):
            from twisted.internet import reactor

            # Scrapy runs coroutines as asyncio tasks: a Deferred is awaited through a Future.
            await maybe_deferred_to_future(meet(reactor, self.folder, "crawling"))
            for href in response.css("a::attr(href)").getall():
                yield response.follow(href, callback=self.parse)
        else:
            yield {"url": response.url}


def main(site: str, folder: str) -> None:
    process = CrawlerProcess(settings=SETTINGS)
    crawler = process.create_crawler(Walker)
    crawled = process.crawl(crawler, site=site, folder=folder)
    from twisted.internet import reactor as installed

    reactor: Any = installed

    def finish(result: object) -> Any:
        assert crawler.stats is not None
        stats = {
            key: value for key, value in crawler.stats.get_stats().items() if isinstance(value, int)
        }
        (Path(folder) / "stats.json").write_text(json.dumps(stats, indent=1))
        return meet(reactor, Path(folder), "done").addBoth(stop)

    def stop(_: object) -> None:
        reactor.stop()

    crawled.addBoth(finish)
    process.start(stop_after_crawl=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
