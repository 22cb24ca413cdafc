// Copy the front-end libraries npm installed into portal/static/vendor/ (git-ignored).
// Run by `make install` after `npm install`; the versions are pinned in package.json.
import { copyFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const vendor = join(root, "portal", "static", "vendor");

// [npm package, file inside it, name under vendor/]
const files = [
  ["htmx.org", "dist/htmx.min.js", "htmx.min.js"],
  ["chart.js", "dist/chart.umd.js", "chart.umd.js"],
  ["@picocss/pico", "css/pico.min.css", "pico.min.css"],
];

mkdirSync(vendor, { recursive: true });
for (const [pkg, file, name] of files) {
  const dir = join(root, "node_modules", pkg);
  const src = join(dir, file);
  if (!existsSync(src)) {
    console.error(`vendor: ${src} is missing; run \`npm install\` (or \`make install\`) first`);
    process.exit(1);
  }
  const { version } = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  copyFileSync(src, join(vendor, name));
  console.log(`vendor: ${pkg}@${version} ${file} -> portal/static/vendor/${name}`);
}
