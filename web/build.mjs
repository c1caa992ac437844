// Bundles the dashboard into dist/: content-hashed assets/app-*.js and app-*.css, and an
// index.html naming them. hearth-server embeds dist/ into the binary (its build.rs).
import * as esbuild from "esbuild";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";

const out = "dist";
rmSync(out, { recursive: true, force: true });
mkdirSync(path.join(out, "assets"), { recursive: true });
const result = await esbuild.build({
  entryPoints: ["src/main.tsx"],
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["es2022"],
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir: path.join(out, "assets"),
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  metafile: true,
  legalComments: "linked",
  logLevel: "warning",
});
let js, css;
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  if (meta.entryPoint === "src/main.tsx") js = path.basename(file);
  if (file.endsWith(".css")) css = path.basename(file);
}
if (!js || !css) throw new Error("esbuild produced no app bundle");
writeFileSync(
  path.join(out, "index.html"),
  `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<title>Hearth</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/${css}">
<script type="module" src="/assets/${js}"></script>
</head>
<body>
<div id="app"><p>Loading the Hearth dashboard…</p></div>
<noscript><p>The Hearth dashboard needs JavaScript; the <code>hearth</code> CLI does not.</p></noscript>
</body>
</html>
`,
);
console.log(`built ${out}/index.html, assets/${js}, assets/${css}`);
