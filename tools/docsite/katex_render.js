// Typeset every formula of the site at build time: reads [[tex, displayMode], ...] as JSON on stdin and writes
// [{html, error?}, ...] on stdout. A formula KaTeX rejects comes back rendered as KaTeX's own error span.
const katex = require('katex');
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', () => {
  const opts = (displayMode, throwOnError) => ({displayMode, throwOnError, output: 'htmlAndMathml', strict: 'ignore'});
  const out = JSON.parse(input).map(([tex, display]) => {
    try {
      return {html: katex.renderToString(tex, opts(display, true))};
    } catch (e) {
      return {html: katex.renderToString(tex, opts(display, false)), error: String(e.message || e)};
    }
  });
  process.stdout.write(JSON.stringify(out));
});
