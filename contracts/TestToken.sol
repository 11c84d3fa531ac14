// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title A stand-in for a USD stablecoin on local chains (tests, `mcpz chain dev`): 6 decimals,
/// EIP-2612 permits, and a mint anyone may call. Never deploy it where tokens are worth anything.
contract TestToken is ERC20, ERC20Permit {
    constructor() ERC20("mcpz Test USD", "TUSD") ERC20Permit("mcpz Test USD") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
