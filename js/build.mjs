// Bundles the pane into src/nbchat/static/: widget.js (the anywidget module) and
// widget.css (the pane's styles with KaTeX's, its fonts inlined: nothing is fetched at
// run time, so math renders offline and behind any proxy). Both widgets, nbchat.Chat
// and nbchat.Compare, use these two files: index.ts draws the compare pane for a
// comparison's model, and index.css holds both panes' styles.

import { readFile } from "node:fs/promises";
import { dirname } from "node:path";

import * as esbuild from "esbuild";

// KaTeX lists each font as woff2, woff and ttf; every browser JupyterLab supports reads
// woff2, so only that one is inlined (about 300 KB instead of 1.2 MB).
const katexWoff2Only = {
  name: "katex-woff2-only",
  setup(build) {
    build.onLoad({ filter: /katex(\.min)?\.css$/ }, async (args) => {
      const css = await readFile(args.path, "utf8");
      return {
        contents: css.replace(/,\s*url\([^)]*\.(?:woff|ttf)\)\s*format\("(?:woff|truetype)"\)/g, ""),
        loader: "css",
        resolveDir: dirname(args.path),
      };
    });
  },
};

await esbuild.build({
  entryPoints: ["js/src/index.ts"],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  outfile: "src/nbchat/static/widget.js",
});

await esbuild.build({
  entryPoints: ["js/src/index.css"],
  bundle: true,
  minify: true,
  loader: { ".woff2": "dataurl" },
  plugins: [katexWoff2Only],
  outfile: "src/nbchat/static/widget.css",
});
