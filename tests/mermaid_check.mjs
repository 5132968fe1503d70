// Parse a Mermaid file with mermaid's own parser (the one GitHub renders with).
// Usage: node tests/mermaid_check.mjs FILE   (exit 0: parses; 1: the parser's error)
// mermaid needs a DOM even to parse: jsdom provides one.
import { readFileSync } from "node:fs";
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false });
try {
  await mermaid.parse(readFileSync(process.argv[2], "utf8"));
  console.log("ok");
} catch (e) {
  console.error(String(e && e.message ? e.message : e));
  process.exit(1);
}
