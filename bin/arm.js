#!/usr/bin/env node
// The arm command, from the built package (dist/).
import { main } from '../dist/cli/main.js';
await main();
