# Install rules, the CMake package, shmetrics.pc and the Debian packages.
#
# Components: "dev" (headers, static libraries, CMake and pkg-config files:
# libshmetrics-dev) and "runtime" (exporter, CLI, systemd unit, default
# configuration: shmetrics).
include(CMakePackageConfigHelpers)

set(SHMETRICS_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/shmetrics")

install(TARGETS shmetrics_shm shmetrics_writer shmetrics_reader EXPORT shmetricsTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY shm/include/ writer/include/ reader/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        COMPONENT dev FILES_MATCHING PATTERN "*.h")
install(FILES "${PROJECT_BINARY_DIR}/generated/shmetrics/version.h"
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/shmetrics COMPONENT dev)
install(EXPORT shmetricsTargets NAMESPACE shmetrics:: DESTINATION ${SHMETRICS_CMAKE_DIR} COMPONENT dev)
configure_package_config_file(cmake/shmetricsConfig.cmake.in "${PROJECT_BINARY_DIR}/shmetricsConfig.cmake"
                              INSTALL_DESTINATION ${SHMETRICS_CMAKE_DIR})
write_basic_package_version_file("${PROJECT_BINARY_DIR}/shmetricsConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/shmetricsConfig.cmake" "${PROJECT_BINARY_DIR}/shmetricsConfigVersion.cmake"
        DESTINATION ${SHMETRICS_CMAKE_DIR} COMPONENT dev)
# shmetrics.pc finds its prefix from where it lies (${pcfiledir}), so a
# tree installed with `cmake --install build --prefix P` or a .deb both work.
file(RELATIVE_PATH SHMETRICS_PC_TO_PREFIX "/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/prefix")
string(REGEX REPLACE "/$" "" SHMETRICS_PC_TO_PREFIX "${SHMETRICS_PC_TO_PREFIX}")
configure_file(cmake/shmetrics.pc.in "${PROJECT_BINARY_DIR}/shmetrics.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/shmetrics.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)

if(NOT SHMETRICS_BUILD_EXPORTER)
  return()
endif()

install(TARGETS shmetrics-exporter shmetrics RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)
install(FILES deploy/systemd/shmetrics-exporter.service DESTINATION lib/systemd/system COMPONENT runtime)
install(FILES deploy/systemd/shmetrics.tmpfiles.conf RENAME shmetrics.conf DESTINATION lib/tmpfiles.d
        COMPONENT runtime)
# /etc/default/shmetrics-exporter: /etc when the prefix is /usr (a .deb, or
# --prefix /usr), else PREFIX/etc, so `cmake --install --prefix P` stays in P.
install(CODE "
  if(CMAKE_INSTALL_PREFIX MATCHES \"/usr/?$\")
    get_filename_component(_etc \"\${CMAKE_INSTALL_PREFIX}/../etc\" ABSOLUTE)
  else()
    set(_etc \"\${CMAKE_INSTALL_PREFIX}/etc\")
  endif()
  file(INSTALL DESTINATION \"\${_etc}/default\" TYPE FILE
       RENAME shmetrics-exporter FILES \"${PROJECT_SOURCE_DIR}/deploy/systemd/shmetrics-exporter.default\")
" COMPONENT runtime)
install(FILES README.md CHANGELOG.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT runtime)
install(FILES deploy/web-config.yml DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples COMPONENT runtime)

# CPack: `cpack -G DEB` in the build directory makes both .debs.
set(CPACK_PACKAGE_NAME shmetrics)
set(CPACK_PACKAGE_VENDOR "shmetrics")
set(CPACK_PACKAGE_CONTACT "shmetrics maintainers <shmetrics@localhost>")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_COMPONENTS_ALL runtime dev)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION misc)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME shmetrics)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION net)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_DEPENDS "adduser")
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION
    "Exporter and CLI for shmetrics segments\n shmetrics-exporter serves every shmetrics segment of a directory as\n Prometheus text, OpenMetrics and JSON; shmetrics inspects segments.")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_CONTROL_EXTRA
    "${PROJECT_SOURCE_DIR}/deploy/debian/conffiles;${PROJECT_SOURCE_DIR}/deploy/debian/postinst")
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libshmetrics-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libabsl-dev (>= 20220623)")
set(CPACK_COMPONENT_DEV_DESCRIPTION
    "shmetrics writer and reader libraries (static), headers, CMake package, shmetrics.pc\n Link shmetrics::writer (find_package(shmetrics)) or `pkg-config --libs shmetrics`.")
include(CPack)
